"""The environment for a child Python process that imports lofi from this checkout."""
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict:
    """``os.environ`` with the checkout first on PYTHONPATH (entries already there kept: carried wheels installed with
    ``pip --target`` live on it), then ``extra``."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
