"""The fidelity of a mini-batch and the LoFi schedule (LoFi §3; the long and short cycles of Wu et al.'s multigrid
training, as in PySlowFast).

A `Fidelity` is what the data pipeline samples and what the head's L-dependent buffers assume: L snippets per video,
T frames per snippet, H×W pixels per frame, and optionally the frame stride inside a snippet (None: the sampler's
default, `lofi.data.sampling.default_stride`).

`LoFiSchedule(mode, full)(epoch, iteration)` is a pure function of the epoch and the iteration inside the epoch.
The LoFi modes never return the full fidelity; the batch size is the caller's and stays constant.

Rounding: the temporal reduction must divide L exactly (L / r_t is an error otherwise). A spatial size H / r_s is
rounded to the nearest even integer (224 / √2 = 158.39 → 158; 224 / 2 = 112), as video codecs and the paper's 158²
use even sizes.
"""
import dataclasses
import math
from typing import List, Optional, Tuple

MODES = ("full", "s", "t", "st", "short_cycle", "long_cycle")


@dataclasses.dataclass(frozen=True)
class Fidelity:
    """L snippets × T frames × H×W pixels; `stride` frames between the frames of a snippet (None: default)."""

    L: int
    T: int
    H: int
    W: int
    stride: Optional[int] = None

    def __post_init__(self):
        for name in ("L", "T", "H", "W"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Fidelity.{name} must be a positive int, got {value!r}")
        if self.stride is not None and (not isinstance(self.stride, int) or self.stride < 1):
            raise ValueError(f"Fidelity.stride must be None or a positive int, got {self.stride!r}")

    def __str__(self) -> str:
        stride = "" if self.stride is None else f"/{self.stride}"
        return f"{self.L}x{self.T}{stride}@{self.H}x{self.W}"


def even_round(x: float) -> int:
    """The nearest even integer to x (at least 2): the documented rounding of spatial sizes."""
    return max(2, 2 * int(math.floor(x / 2 + 0.5)))


def reduce(full: Fidelity, r_t: int = 1, r_s: float = 1.0) -> Fidelity:
    """`full` with L / r_t snippets (r_t must divide L) and H / r_s × W / r_s pixels rounded to even integers."""
    if not isinstance(r_t, int) or r_t < 1:
        raise ValueError(f"r_t must be a positive int, got {r_t!r}")
    if r_s < 1:
        raise ValueError(f"r_s must be >= 1, got {r_s!r}")
    if full.L % r_t:
        raise ValueError(f"L={full.L} is not divisible by r_t={r_t}")
    H, W = (full.H, full.W) if r_s == 1 else (even_round(full.H / r_s), even_round(full.W / r_s))
    return dataclasses.replace(full, L=full.L // r_t, H=H, W=W)


class LoFiSchedule:
    """The fidelity of every mini-batch: `schedule(epoch, iteration) -> Fidelity`, iteration counted inside the epoch.

    Modes (paper Table 2): "full" (Ω_f), "s" (I: L × H/r_s × W/r_s), "t" (II: L/r_t × H × W),
    "st" (III: L/st_r_t × H/st_r_s × W/st_r_s), "short_cycle" (I→II→III, changing every c_s iterations and
    restarting at I each epoch, like multigrid's short-cycle sampler), "long_cycle" (I→II→III, changing every c_l
    epochs; the paper's default).
    """

    def __init__(self, mode: str, full: Fidelity, r_t: int = 4, r_s: float = 2.0, st_r_t: int = 2,
                 st_r_s: float = math.sqrt(2), c_s: int = 16, c_l: int = 1):
        if mode not in MODES:
            raise ValueError(f"LoFiSchedule mode must be one of {MODES}, got {mode!r}")
        for name, value in (("c_s", c_s), ("c_l", c_l)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LoFiSchedule {name} must be a positive int, got {value!r}")
        self.mode, self.full, self.c_s, self.c_l = mode, full, c_s, c_l
        self.cycle: Tuple[Fidelity, ...] = () if mode == "full" else (
            reduce(full, r_s=r_s), reduce(full, r_t=r_t), reduce(full, r_t=st_r_t, r_s=st_r_s))
        if mode != "full" and full in self.fidelities():
            raise ValueError(f"LoFiSchedule {mode!r}: a reduction factor of 1 gives the full fidelity {full}")

    def __call__(self, epoch: int, iteration: int) -> Fidelity:
        if epoch < 0 or iteration < 0:
            raise ValueError(f"epoch and iteration must be >= 0, got ({epoch}, {iteration})")
        if self.mode == "full":
            return self.full
        if self.mode in ("s", "t", "st"):
            return self.cycle[("s", "t", "st").index(self.mode)]
        step = iteration // self.c_s if self.mode == "short_cycle" else epoch // self.c_l
        return self.cycle[step % 3]

    def fidelities(self) -> List[Fidelity]:
        """The distinct fidelities this schedule can return, in cycle order."""
        if self.mode == "full":
            return [self.full]
        if self.mode in ("s", "t", "st"):
            return [self(0, 0)]
        return list(self.cycle)

    def __repr__(self) -> str:
        return f"LoFiSchedule({self.mode!r}, full={self.full}, cycle={[str(f) for f in self.cycle]})"
