"""Content hashes: the hex SHA-256 of a file, read in 1 MiB blocks (shard and manifest checksums, the feature
cache's encoder key, the head stage's record of the encoder it trained on)."""
import hashlib
from pathlib import Path
from typing import Union


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
