"""A loopback HTTP server over a directory (the standard library's http.server in a thread, on a free port) that logs
the files it is asked for and can drop a connection: ``drops[name] = K`` makes the next request for ``name`` send K
bytes of the file (after a Content-Length header for all of it) and close."""
import contextlib
import functools
import http.server
import threading
from typing import Dict, Iterator, List


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def send_head(self):
        self.server.requests.append(self.path.lstrip("/"))
        return super().send_head()

    def copyfile(self, source, outputfile):
        name = self.path.lstrip("/")
        cut = self.server.drops.pop(name, None)
        if cut is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(cut))
        outputfile.flush()
        self.close_connection = True


class ShardServer(http.server.ThreadingHTTPServer):
    requests: List[str]
    drops: Dict[str, int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def serve(directory) -> Iterator[ShardServer]:
    """Serves ``directory`` on 127.0.0.1 until the block ends."""
    server = ShardServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
    server.requests, server.drops = [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
