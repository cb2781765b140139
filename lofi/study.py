"""The reproduction study: the paper's Tables 1, 2, 5, 6 and 7 re-run on the synthetic TAL benchmark, row × seed.

Each row is a training config, ``lofi/configs/study/<preset>/<row>.yaml`` (``_base.yaml`` there holds the preset's
scale), that also runs by itself with ``python -m lofi.train --config``. A cell is one row at one seed; it runs in
``<work_dir>/seed<k>/<row>`` and its result is ``<row>-seed<k>.json`` under ``docs/results/<preset>/``.
The ACP pretraining depends only on (encoder, seed), so every row of a seed that starts with ``acp`` shares one ACP
run, ``<work_dir>/seed<k>/_acp_<encoder>``, and starts its remaining stages from its ``encoder.pt`` (``model.weights``).
This module names the rows, tables and presets and builds each cell's ``lofi.train`` overrides; tools/reproduce.py
runs the cells and tools/report_study.py writes docs/RESULTS.md from their JSONs (lofi.study_report).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from lofi.config import CONFIG_DIR, load_config, to_dict

STUDY_DIR = CONFIG_DIR / "study"
# The lofi.train overrides of every cell besides its seed, run directory and stages: no progress bars or TensorBoard.
RUN_OVERRIDES = ("log.progress=false", "log.tensorboard=false")


@dataclass(frozen=True)
class Row:
    """How the report shows a row: its label, the frozen-ACP row its Δ is taken against, and whether its config needs
    a local ImageNet state dict as ``model.weights`` (``--imagenet``)."""
    label: str
    baseline: str = "acp"
    imagenet: bool = False


ROWS: Dict[str, Row] = {
    "icp": Row("ICP analogue (random init, frozen)"),
    "icp_imagenet": Row("ICP (ImageNet weights, frozen)", imagenet=True),
    "acp": Row("ACP (frozen)"),
    "acp_plus": Row("ACP+ (fine-tuned on foreground segments, frozen)"),
    "s_lofi": Row("S-LoFi (r_s = 2)"),
    "t_lofi": Row("T-LoFi (r_t = 4)"),
    "st_lofi": Row("ST-LoFi (r_t = 2, r_s = √2)"),
    "short_c_lofi": Row("Short C-LoFi (c_s = 16)"),
    "long_c_lofi": Row("LoFi = Long C-LoFi (c_l = 1)"),
    "acp_bn_only": Row("control: ACP + target BN statistics only (LoFi stage, lr 1e-12)"),
    "r34_acp": Row("TSM-R34 ACP (frozen)"),
    "r34_long_c_lofi": Row("TSM-R34 Long C-LoFi", baseline="r34_acp"),
    "r50_acp": Row("TSM-R50 ACP (frozen)"),
    "r50_long_c_lofi": Row("TSM-R50 Long C-LoFi", baseline="r50_acp"),
    "r34_acp_bn_only": Row("control: TSM-R34 ACP + target BN statistics only", baseline="r34_acp"),
    "r50_acp_bn_only": Row("control: TSM-R50 ACP + target BN statistics only", baseline="r50_acp"),
    "bmn_acp": Row("BMN head, ACP (frozen)"),
    "bmn_long_c_lofi": Row("BMN head, Long C-LoFi", baseline="bmn_acp"),
    "actionformer_acp": Row("ActionFormer head, ACP (frozen)"),
    "actionformer_long_c_lofi": Row("ActionFormer head, Long C-LoFi", baseline="actionformer_acp"),
    "r2plus1d_acp": Row("R(2+1)D-18 ACP (frozen, at half TSM's size)"),
    "r2plus1d_t_lofi": Row("R(2+1)D-18 T-LoFi (r_t = 4, at half TSM's size)", baseline="r2plus1d_acp"),
    "arrow": Row("Arrow of Time (self-supervised on the clips, frozen)"),
    "speed": Row("SpeedNet (self-supervised on the clips, frozen)"),
    "acp_arrow": Row("ACP + Arrow (both losses on every step, frozen)"),
    "acp_speed": Row("ACP + Speed (both losses on every step, frozen)"),
}
TABLE_ROWS = {"1": ("icp", "icp_imagenet", "acp", "acp_plus", "long_c_lofi"),
              "2": ("acp", "s_lofi", "t_lofi", "st_lofi", "short_c_lofi", "long_c_lofi"),
              "5": ("acp", "t_lofi", "r2plus1d_acp", "r2plus1d_t_lofi"),
              "6": ("acp", "long_c_lofi", "r34_acp", "r34_long_c_lofi", "r50_acp", "r50_long_c_lofi"),
              "7": ("acp", "arrow", "speed", "acp_arrow", "acp_speed", "long_c_lofi"),
              "control": ("acp", "acp_bn_only", "long_c_lofi"),
              "control6": ("r34_acp", "r34_acp_bn_only", "r34_long_c_lofi", "r50_acp", "r50_acp_bn_only",
                           "r50_long_c_lofi"),
              "heads": ("acp", "long_c_lofi", "bmn_acp", "bmn_long_c_lofi", "actionformer_acp",
                        "actionformer_long_c_lofi")}
CONTROL_TABLES = ("control", "control6", "heads")  # ours, with no counterpart in the paper
TABLE_TITLES = {"1": "Table 1 analogue: encoder pretraining", "2": "Table 2 analogue: LoFi configurations",
                "5": "Table 5 analogue: encoder family (TSM-R18 / R(2+1)D-18, T-LoFi at each encoder's own size)",
                "6": "Table 6 analogue: encoder depth (TSM-R18 / R34 / R50)",
                "7": "Table 7 analogue: self-supervised pretraining (Arrow of Time, SpeedNet), alone and with ACP",
                "control": "Control (ours, not in the paper): is LoFi's gain learning, or BN statistics on the target?",
                "control6": "The same control for the deeper encoders (ours, not in the paper)",
                "heads": "LoFi beyond G-TAD: the BMN and ActionFormer heads, frozen ACP against Long C-LoFi (ours, "
                         "not in the paper)"}
# The LoFi paper's numbers (mAP %, ActivityNet-1.3 validation and HACS-1.1) for [0.5, 0.75, 0.95, avg]; Tables 5, 6
# and 7: avg only (AVG_ONLY_TABLES).
PAPER = {
    "icp": ([48.45, 32.40, 6.89, 32.16], [31.74, 19.64, 5.67, 20.18]),
    "icp_imagenet": ([48.45, 32.40, 6.89, 32.16], [31.74, 19.64, 5.67, 20.18]),
    "acp": ([49.64, 34.16, 7.68, 33.59], [35.68, 22.79, 6.51, 23.00]),
    "acp_plus": ([49.87, 34.58, 7.85, 33.84], [36.31, 22.96, 6.62, 23.31]),
    "s_lofi": ([50.47, 34.71, 7.57, 34.12], [37.16, 24.23, 6.84, 24.25]),
    "t_lofi": ([50.28, 35.21, 8.09, 34.32], [37.30, 24.18, 7.07, 24.36]),
    "st_lofi": ([50.36, 34.79, 7.59, 34.12], [37.13, 24.27, 7.08, 24.36]),
    "short_c_lofi": ([50.57, 35.12, 8.14, 34.38], [37.63, 24.45, 6.95, 24.60]),
    "long_c_lofi": ([50.68, 35.16, 8.16, 34.49], [37.78, 24.40, 7.29, 24.64]),
    "r34_acp": ([None, None, None, 33.90], None), "r34_long_c_lofi": ([None, None, None, 34.74], None),
    "r50_acp": ([None, None, None, 34.26], None), "r50_long_c_lofi": ([None, None, None, 34.96], None),
    "r2plus1d_acp": ([None, None, None, 33.55], None), "r2plus1d_t_lofi": ([None, None, None, 34.21], None),
    "arrow": ([None, None, None, 28.82], None), "speed": ([None, None, None, 29.39], None),
    "acp_arrow": ([None, None, None, 33.72], None), "acp_speed": ([None, None, None, 33.75], None),
}
AVG_ONLY_TABLES = ("5", "6", "7")


@dataclass(frozen=True)
class Preset:
    """A scale of the study (its configs: ``lofi/configs/study/<name>/``): the default seeds, tables and rows, a time
    budget per invocation (minutes), and the labels of rows whose config differs from the paper's setting."""
    seeds: tuple = (0, 1, 2)
    tables: tuple = ("1", "2")
    rows: Optional[tuple] = None  # None: every row of ``tables`` that has a config here
    smoke_seeds: tuple = (0,)
    max_minutes: Optional[float] = None
    labels: Dict[str, str] = field(default_factory=dict)


PRESETS = {
    "cpu": Preset(tables=("1", "2", "control", "6", "control6", "heads", "5", "7"),
                  labels={"short_c_lofi": "Short C-LoFi (c_s = 1: an epoch has 11 steps here)"}),
    "gpu": Preset(tables=("2", "heads"), rows=("acp", "long_c_lofi", "t_lofi", "bmn_acp", "bmn_long_c_lofi",
                                                 "actionformer_acp", "actionformer_long_c_lofi"), max_minutes=4.5),
}


def label(preset: str, row: str) -> str:
    """The row's label on ``preset`` (the row's name for a row the study does not name)."""
    p = PRESETS.get(preset)
    return (p.labels.get(row) if p else None) or (ROWS[row].label if row in ROWS else row)


def row_configs(configs: Path) -> Dict[str, Path]:
    """{row: its YAML} of a study folder (every ``*.yaml`` but those starting with ``_``, such as ``_base.yaml``)."""
    return {p.stem: p for p in sorted(Path(configs).glob("*.yaml")) if not p.name.startswith("_")}


def select_rows(preset: Preset, configs: Path, tables: Sequence[str], rows: Optional[Sequence[str]],
                imagenet: Optional[str]) -> List[str]:
    """The rows to run, in table order: ``rows`` if given, else the preset's rows or every row of ``tables`` that has
    a config in ``configs``. The ICP row is the random-init analogue unless ``imagenet`` gives the true ICP row.
    ValueError naming an unknown row or table."""
    have = row_configs(configs)
    if rows:
        unknown = [r for r in rows if r not in have]
        if unknown:
            raise ValueError(f"unknown row(s) {unknown}: no such config in {configs}; valid: {', '.join(have)}")
        return list(rows)
    bad = [t for t in tables if t not in TABLE_ROWS]
    if bad:
        raise ValueError(f"unknown table(s) {bad}; valid: {', '.join(TABLE_ROWS)}")
    skip = "icp" if imagenet else "icp_imagenet"
    wanted = preset.rows or tuple(r for t in tables for r in TABLE_ROWS[t])
    return [r for r in dict.fromkeys(wanted) if r != skip and r in have]


# ---------------------------------------------------------------------------------------------------------- cells

@dataclass(frozen=True)
class Cell:
    """One row at one seed: its config file and the lofi.train overrides it runs with."""
    row: str
    seed: int
    config: Path
    imagenet: Optional[str] = None

    def base(self):
        """The row's config as its file gives it (validated, paths unchecked)."""
        return load_config(self.config, check_paths=False)

    def seed_dir(self) -> Path:
        return Path(self.base().work_dir) / f"seed{self.seed}"

    def run_dir(self) -> Path:
        return self.seed_dir() / self.row

    def acp_dir(self) -> Optional[Path]:
        """The run of the ACP stage this cell shares with the other rows of its seed (None: the row has no ACP)."""
        cfg = self.base()
        return self.seed_dir() / f"_acp_{cfg.model.encoder}" if "acp" in cfg.stages else None

    def acp_overrides(self) -> List[str]:
        """The overrides of the shared ACP run: the row's config with only its acp stage."""
        return [f"seed={self.seed}", f"work_dir={self.seed_dir()}", f"name={self.acp_dir().name}", "stages=[acp]",
                *RUN_OVERRIDES]

    def overrides(self) -> List[str]:
        """The overrides of the cell's own run: its stages after the shared ACP, from that ACP's encoder."""
        cfg = self.base()
        out = [f"seed={self.seed}", f"work_dir={self.seed_dir()}", f"name={self.row}", *RUN_OVERRIDES]
        if "acp" in cfg.stages:
            out += [f"stages=[{','.join(s for s in cfg.stages if s != 'acp')}]",
                    f"model.weights={self.acp_dir() / 'acp' / 'encoder.pt'}"]
        elif self.row in ROWS and ROWS[self.row].imagenet:
            out.append(f"model.weights={self.imagenet}")
        return out

    def resolved(self) -> dict:
        """The config (a ``to_dict`` tree) the cell's run has: what its result JSON records, to tell whether the
        result is still the one its row's config gives."""
        return to_dict(load_config(self.config, self.overrides(), check_paths=False))


def cell_path(out: Path, row: str, seed: int) -> Path:
    return Path(out) / f"{row}-seed{seed}.json"


def read_cell(path: Path) -> Optional[dict]:
    """A finished cell's JSON (it parses and holds metrics), else None (absent, torn by a killed write, foreign)."""
    try:
        cell = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return cell if isinstance(cell, dict) and "metrics" in cell else None


def load_cells(out: Path) -> List[dict]:
    """Every finished cell under ``out``, by file name."""
    cells = (read_cell(p) for p in sorted(Path(out).glob("*-seed*.json")))
    return [c for c in cells if c is not None]


def encoder_change(before: str, after: str) -> Dict[str, Optional[float]]:
    """How far a stage moved the encoder (do gradients reach it?): relative L2 change ||after - before|| / ||before||
    of the conv weights (2-D and 3-D kernels), of the BN affine weights and of the BN running variances (None when a
    group is empty)."""
    import torch
    a = torch.load(before, map_location="cpu", weights_only=True)
    b = torch.load(after, map_location="cpu", weights_only=True)

    def rel(keys):
        num = sum(float((b[k].float() - a[k].float()).pow(2).sum()) for k in keys)
        den = sum(float(a[k].float().pow(2).sum()) for k in keys)
        return math.sqrt(num / den) if den else None
    conv = [k for k in a if k.endswith(".weight") and a[k].dim() >= 4]
    bn = [k for k in a if k.endswith(".weight") and a[k].dim() == 1]
    var = [k for k in a if k.endswith("running_var")]
    return {"conv_weight": rel(conv), "bn_weight": rel(bn), "bn_running_var": rel(var)}

