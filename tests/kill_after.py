"""Runs a module like ``python -m`` but SIGKILLs the process after N optimizer steps of the training loop:
``python tests/kill_after.py N -m lofi.train ARGS...`` (for the resume tests)."""
import os
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


def step_then_maybe_die(self, it, epoch, iteration):
    result = original(self, it, epoch, iteration)
    count[0] += 1
    if count[0] == limit:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


Trainer._step = step_then_maybe_die
runpy.run_module(module, run_name="__main__", alter_sys=True)
