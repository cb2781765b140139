"""Atomic checkpoints with everything needed for an exact resume, and the retention policy.

A checkpoint is a dict: ``models`` (name → state dict), ``optimizer``, ``scheduler``, ``scaler``, ``rng`` (Python,
NumPy, torch CPU and every CUDA device), ``position`` ({epoch, iteration, done}: the next optimizer step to run;
this is also the LoFi schedule's position, since the schedule is a pure function of it), ``config`` and ``extra``.
Files in a stage directory: ``step-EEEE-IIIIII.pt`` (the newest ``keep`` are kept), ``last.pt`` and ``best.pt``.
Each write goes to a temporary file in the same directory, is fsync'ed, then renamed over the target. Every file is
read back with ``torch.load(weights_only=True)`` (:func:`load`): a checkpoint is tensors, plain containers and numbers.
"""
from __future__ import annotations

import hashlib
import pickle
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from lofi.atomic import write_with

STEP_RE = re.compile(r"step-(\d{4})-(\d{6})\.pt$")


def stage_checkpoints(directory: Union[str, Path]) -> List[Path]:
    """The checkpoint files a stage wrote into ``directory`` and its subfolders (the head stage's per-lr folders):
    ``last.pt``, ``best.pt``, step files and ``encoder.pt``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*.pt")
                  if p.is_file() and (p.name in ("last.pt", "best.pt", "encoder.pt") or STEP_RE.match(p.name)))


def atomic_save(obj: Any, path: Union[str, Path]) -> Path:
    """torch.save to a temporary file beside ``path``, fsync, rename (never a half-written ``path``)."""
    return write_with(path, lambda f: torch.save(obj, f))


class UnsafeFileError(RuntimeError):
    """A file that only full unpickling could read (unpickling can run arbitrary code), refused."""


def load(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Any:
    """A file written by ``torch.save`` (a checkpoint, ``encoder.pt``, ``model.pt``, third-party weights), read with
    ``weights_only=True``: tensors, plain containers, strings and numbers only, so a crafted file cannot run code.
    A file holding any other Python object is refused with :class:`UnsafeFileError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        why = re.search(r"WeightsUnpickler error:\s*([^\n]+?)(?:\. Please|\n|$)", str(e))
        raise UnsafeFileError(
            f"{path} cannot be read safely: torch.load(weights_only=True) refused it ({why.group(1) if why else e}). "
            "A file holding Python objects other than tensors, plain containers and numbers needs full unpickling, "
            "which can run arbitrary code, so it is not loaded. Only if you trust the file, convert it once to a "
            f"plain state dict: torch.save(torch.load('{path}', weights_only=False)['state_dict'], 'plain.pt')"
        ) from None
    except Exception as e:  # a truncated or foreign file
        raise RuntimeError(f"{path} cannot be read: {e}") from e


def state_hash(state_dict: Dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, shapes, dtypes and values (independent of the file it came from)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(name.encode())
        if torch.is_tensor(t):
            t = t.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(t).encode())
    return h.hexdigest()


def capture_rng() -> Dict[str, Any]:
    """Every RNG state this process uses: Python, NumPy, torch CPU, and each CUDA device. NumPy's key array is stored
    as a tensor, so a checkpoint holds tensors, plain containers and numbers only (``weights_only`` loading)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


class Checkpointer:
    """Writes and finds the checkpoints of one stage directory; keeps the newest ``keep`` step files, last and best."""

    def __init__(self, directory: Union[str, Path], keep: int = 2, enabled: bool = True):
        self.dir = Path(directory)
        self.keep = keep
        self.enabled = enabled  # False on ranks other than 0

    def state(self, models: Dict[str, torch.nn.Module], optimizer=None, scheduler=None, scaler=None, *,
              epoch: int, iteration: int, done: bool = False, config: Optional[dict] = None,
              extra: Optional[dict] = None) -> Dict[str, Any]:
        return {
            "models": {k: _unwrap(m).state_dict() for k, m in models.items()},
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": capture_rng(),
            "position": {"epoch": epoch, "iteration": iteration, "done": done},
            "config": config,
            "extra": extra or {},
        }

    def save(self, state: Dict[str, Any], *, best: bool = False, step_file: bool = True) -> Optional[Path]:
        """Writes ``last.pt`` (and a step file, and ``best.pt`` when ``best``), then prunes old step files."""
        if not self.enabled:
            return None
        pos = state["position"]
        last = atomic_save(state, self.dir / "last.pt")
        if step_file:
            atomic_save(state, self.dir / f"step-{pos['epoch']:04d}-{pos['iteration']:06d}.pt")
            self.prune()
        if best:
            atomic_save(state, self.dir / "best.pt")
        return last

    def prune(self) -> None:
        steps = sorted((p for p in self.dir.glob("step-*.pt") if STEP_RE.search(p.name)), key=lambda p: p.name)
        for p in steps[:-self.keep] if self.keep > 0 else steps:
            p.unlink(missing_ok=True)

    def latest(self) -> Optional[Path]:
        """The newest checkpoint (``last.pt``), or None."""
        path = self.dir / "last.pt"
        return path if path.is_file() else None

    @staticmethod
    def restore(state: Dict[str, Any], models: Dict[str, torch.nn.Module], optimizer=None, scheduler=None,
                scaler=None, rng: bool = True) -> Dict[str, int]:
        """Loads everything back into the given objects; returns the position."""
        for name, model in models.items():
            if name not in state["models"]:
                raise KeyError(f"checkpoint has no model {name!r} (it has {sorted(state['models'])})")
            _unwrap(model).load_state_dict(state["models"][name])
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        if rng:
            restore_rng(state["rng"])
        return state["position"]
