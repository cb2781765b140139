"""Runs a module like ``python -m`` but SIGKILLs the process after N optimizer steps of the training loop:
``python tests/kill_after.py N -m lofi.train ARGS...`` (for the resume tests).

Under torchrun (``torchrun ... tests/kill_after.py N -m lofi.train ...``) two environment variables narrow it down:
``KILL_RANK`` kills only that rank, and ``KILL_ONCE=PATH`` kills only while PATH does not exist (it is created
just before the kill), so the restarted worker group runs to the end."""
import os
import pathlib
import runpy
import signal
import sys

from lofi.engine.loop import Trainer

limit = int(sys.argv[1])
assert sys.argv[2] == "-m", "usage: kill_after.py N -m MODULE ARGS..."
module = sys.argv[3]
sys.argv = [module, *sys.argv[4:]]
original = Trainer._step
count = [0]
rank_ok = os.environ.get("KILL_RANK") in (None, os.environ.get("RANK", "0"))
once = os.environ.get("KILL_ONCE")


def step_then_maybe_die(self, it, epoch, iteration):
    result = original(self, it, epoch, iteration)
    count[0] += 1
    if count[0] == limit and rank_ok and not (once and pathlib.Path(once).exists()):
        if once:
            pathlib.Path(once).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return result


Trainer._step = step_then_maybe_die
runpy.run_module(module, run_name="__main__", alter_sys=True)
