"""Typed, validated training configs: YAML files (``lofi/configs/*.yaml``) plus dotted ``key=value`` overrides.

Every problem is reported before anything runs, as a :class:`ConfigError` that names the dotted key
(``lofi.schedule.r_t``, ``head.batch_size``, ...). Units: ``fidelity.L`` in snippets, ``fidelity.T`` in frames,
``fidelity.size`` in pixels (H = W), epochs and ``*_step`` values in epochs, ``checkpoint.every_iters`` in optimizer
steps, ``dist.timeout_s`` in seconds. Every float must be finite (``.nan``, ``.inf`` and overflowing values such as
``1e400`` are refused) and lie in its key's range.
A YAML file may start from another with ``_base_: other.yaml`` (a path relative to the file); its keys then override.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import yaml

from lofi.stages import table
from lofi.stages.table import stage_key  # noqa: F401  (re-exported: the config section of a stage)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
STAGES = table.stage_names()
# Config keys that may change when a run resumes: where and how it runs and logs, not what it computes.
RESUME_FREE = table.RUN_KEYS
BatchSize = Union[int, Literal["auto"]]
# Sections whose keys default to acp's, but for what they set themselves (see load_config): ACP+ fine-tunes the ACP
# encoder at ACP's clip fidelity; the pretext stages train on ACP's clips with ACP's recipe.
_ACP_RECIPE = ("epochs", "batch_size", "optim", "fidelity")
FROM_ACP = {"acp_plus": ("fidelity",), **{s: _ACP_RECIPE for s in ("arrow", "speed", "acp_arrow", "acp_speed")}}


class ConfigError(ValueError):
    """A config problem; the message names every offending key."""


@dataclass
class FidelityConfig:
    """One fidelity: L snippets of T frames, H = W = size pixels; stride in frames (None: tile the video)."""
    L: int = 100
    T: int = 8
    size: int = 224
    stride: Optional[int] = None


@dataclass
class ScheduleConfig:
    """The LoFi schedule (lofi.fidelity.LoFiSchedule); the paper's defaults: Long C-LoFi, r_t=4, r_s=2, ST r_t=2, r_s=√2."""
    mode: Literal["full", "s", "t", "st", "short_cycle", "long_cycle"] = "long_cycle"
    r_t: int = 4
    r_s: float = 2.0
    st_r_t: int = 2
    st_r_s: float = 2 ** 0.5
    c_s: int = 16
    c_l: int = 1


@dataclass
class OptimConfig:
    """Optimizer and step lr schedule: lr × gamma every step_size epochs. ``adamw``: decoupled weight decay
    (ActionFormer's); ``sgd`` and ``adam`` add it to the gradient (L2, as G-TAD). ``max_grad_norm`` > 0: the global
    gradient L2 norm is clipped to it before each optimizer step (0: off)."""
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 1e-4
    step_size: int = 5
    gamma: float = 0.5
    max_grad_norm: float = 0.0


@dataclass
class SyntheticBuildConfig:
    """The synthetic benchmark (lofi.data.synthetic) that is built into data.shards / data.clip_shards when they are
    missing and ``build`` is true: a preset with optional overrides (None keeps the preset's value)."""
    build: bool = False
    preset: str = "demo"
    seed: int = 0
    num_videos: Optional[int] = None
    num_classes: Optional[int] = None
    num_clips: Optional[int] = None
    size: Optional[List[int]] = None  # [height, width] pixels of the rendered videos
    length: Optional[List[float]] = None  # [min, max] video duration, seconds
    distractors: Optional[List[int]] = None  # [min, max] distractor objects per video
    pack_fps: int = 15  # the shards' frame rate (lofi.data.packing); the videos render at the preset's fps
    short_side: int = 128  # the shards' short side, pixels


@dataclass
class DataConfig:
    shards: str = "shards/demo"
    clip_shards: Optional[str] = "shards/demo/clips"
    train_subset: str = "training"
    val_subset: str = "validation"
    backend: Literal["auto", "cpu", "dali"] = "auto"
    num_workers: int = 2
    max_corrupt_fraction: float = 0.05  # share of an epoch's samples per rank that may be corrupt before it stops
    # shards on a web or object store (shards/clip_shards = http(s)://BASE or pipe:COMMAND with {name}): fetched
    # whole into cache_dir (default: under the system's temp directory), at most cache_max_gib GiB, retried
    # fetch_retries times with backoff
    cache_dir: Optional[str] = None
    cache_max_gib: float = 50.0
    fetch_retries: int = 5
    synthetic: SyntheticBuildConfig = field(default_factory=SyntheticBuildConfig)


@dataclass
class ModelConfig:
    """``encoder`` and ``head``: names in lofi.models.registry's ENCODERS and HEADS."""
    encoder: str = "tsm_r18"
    head: str = "gtad"
    weights: Optional[str] = None
    frozen_bn: bool = False
    channels_last: bool = False
    checkpoint_chunks: int = 0
    sync_bn: bool = False
    amp: bool = False
    gtad_fused: bool = True


@dataclass
class ClsStageConfig:
    """ACP / ACP+ / Arrow of Time: training of the encoder on clips at one fixed fidelity, classification
    (ClipClassifier) or the arrow pretext (lofi.stages.pretext). ACP+ continues ACP, so each key of
    ``acp_plus.fidelity`` left unset takes ``acp.fidelity``'s value; the pretext sections (arrow, speed, acp_arrow,
    acp_speed) take every key of ACP's recipe (epochs, batch_size, optim, fidelity) they leave unset (see
    load_config)."""
    epochs: int = 5
    batch_size: int = 16
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=0.01, momentum=0.9, gamma=0.1))
    fidelity: FidelityConfig = field(default_factory=lambda: FidelityConfig(L=1, T=8, size=224))


@dataclass
class SpeedStageConfig(ClsStageConfig):
    """SpeedNet pretext (Benaim et al., CVPR 2020; lofi.data.pretext): each clip played at a normal rate (drawn from
    ``normal``) and sped up (from ``fast``, 2× on average), both in one batch; a training clip is zoomed by a factor
    from ``zoom`` before the crop. Each range is [low, high], drawn uniformly per clip; a rate multiplies the gaps
    between the clip's sampled frames. Drawing the rates and the zoom per clip keeps frame-rate and compression
    artefacts (and the size of the motion in pixels) from telling the classes apart, as SpeedNet's temporal and
    spatial augmentation do."""
    normal: List[float] = field(default_factory=lambda: [1.0, 1.2])
    fast: List[float] = field(default_factory=lambda: [1.7, 2.3])
    zoom: List[float] = field(default_factory=lambda: [1.0, 1.5])


@dataclass
class AcpArrowStageConfig(ClsStageConfig):
    """ACP + Arrow of Time: ACP's cross-entropy plus ``weight`` × the arrow loss on every step."""
    weight: float = 1.0


@dataclass
class AcpSpeedStageConfig(SpeedStageConfig):
    """ACP + SpeedNet: ACP's cross-entropy plus ``weight`` × the speed loss on every step."""
    weight: float = 1.0


@dataclass
class LoFiStageConfig:
    """Encoder + G-TAD end to end on the TAL loss at the fidelities of ``schedule`` (never the full one).
    ``batch_size: auto`` keeps the global batch ``auto_global_batch`` with the largest per-process batch that fits
    ``memory_budget_gib`` per device, and gradient accumulation for the rest."""
    epochs: int = 15
    batch_size: BatchSize = 16
    auto_global_batch: int = 16
    memory_budget_gib: float = 32.0
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class HeadStageConfig:
    """Frozen encoder, cached full-fidelity features, fresh G-TAD + video classifier (G-TAD's recipe).
    ``select``: what picks the epoch (and the lr of ``lr_search``): the lowest validation loss (G-TAD's criterion)
    or the highest validation average mAP; the other criterion's pick is reported beside it. ``video_info``: a CSV in
    G-TAD's ``video_info`` format (video, numFrame, seconds, fps, rfps, featureFrame) giving the time base of the
    external features ``features``: they cover ``seconds · featureFrame / numFrame`` of each video."""
    epochs: int = 10
    batch_size: int = 16
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=4e-3, weight_decay=1e-4,
                                                                   step_size=5, gamma=0.1))
    lr_search: List[float] = field(default_factory=list)
    select: Literal["val_loss", "val_map"] = "val_loss"
    features: Optional[str] = None
    video_info: Optional[str] = None
    feature_layout: Literal["TC", "CT"] = "TC"
    annotations: Optional[str] = None
    cache_dir: Optional[str] = None
    cache_shard_size: int = 64


@dataclass
class PostprocessConfig:
    """``candidates``: which proposals the boundary filter of the map heads (G-TAD, BMN) keeps
    (lofi.models.proposal_map): ``opentad`` reads the end probability at the last included snippet and keeps
    proposals ending at the video's end; ``gtad`` reads it one snippet later, as G-TAD's inference, and never
    produces a proposal ending at the video's end. ``nms``: the soft-NMS rule (lofi.ops.soft_nms), ``gaussian``
    (G-TAD: every overlap decays by exp(−IoU²/sigma)) or ``bmn`` (BMN: only an IoU above nms_low + (nms_high −
    nms_low) · the picked proposal's width in normalized time decays). ``voting_iou`` > 0: score voting at that IoU
    (0: off). ``min_duration_s``: detections shorter than this (seconds) are dropped."""
    candidates: Literal["opentad", "gtad"] = "opentad"
    nms: Literal["gaussian", "bmn"] = "gaussian"
    sigma: float = 0.8
    nms_low: float = 0.5
    nms_high: float = 0.9
    voting_iou: float = 0.0
    top_k: int = 100
    top_classes: int = 2
    min_duration_s: float = 0.0
    classifier_file: Optional[str] = None


@dataclass
class BMNConfig:
    """The BMN head's keyword arguments (lofi.models.bmn.BMN), defaults its ActivityNet setting in the public
    implementations (JJBOY/BMN-Boundary-Matching-Network: models.py, opts.py; mmaction2: BMN, bmn_400x100 config)."""
    hidden_1d: int = 256  # width of the 1-D convs and the BM features (hidden_dim_1d); a multiple of 4
    hidden_2d: int = 128  # width of the 2-D convs (hidden_dim_2d)
    hidden_3d: int = 512  # output width of the 3-D conv (hidden_dim_3d)
    num_samples: int = 32  # N, bins per proposal in the BM layer (num_samples; JJBOY's num_sample)
    num_samples_per_bin: int = 3  # points averaged per bin (num_samples_per_bin; JJBOY's num_sample_perbin)
    boundary_ratio: float = 0.5  # widens the sampled region by this × the proposal's length per side (prop_boundary_ratio)


@dataclass
class EvalConfig:
    tiou: List[float] = field(default_factory=lambda: [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    num_timelines: int = 4
    baseline_seed: int = 0


@dataclass
class ActionFormerConfig:
    """The ActionFormer head's keywords (lofi.models.actionformer; names as the public release
    happyharrycn/actionformer_release). Defaults: its ActivityNet config, ``configs/anet_tsp.yaml`` over the defaults
    of ``libs/core/config.py`` (train_cfg, test_cfg and model keys), as the comments say."""
    backbone_arch: List[int] = field(default_factory=lambda: [2, 2, 5])  # default: embedding convs, stem, branch
    n_head: int = 4  # anet_tsp
    n_mha_win_size: List[int] = field(default_factory=lambda: [25, 25, 25, 25, 25, -1])  # anet_tsp; -1: global
    embd_kernel_size: int = 3  # default
    embd_dim: int = 256  # anet_tsp (= fpn_dim: the identity neck)
    head_dim: int = 256  # anet_tsp
    head_num_layers: int = 3  # default: 2 convs + the output conv
    head_kernel_size: int = 3  # default
    regression_range: List[List[float]] = field(  # default; snippets (the release's feature-grid units)
        default_factory=lambda: [[0.0, 4.0], [4.0, 8.0], [8.0, 16.0], [16.0, 32.0], [32.0, 64.0], [64.0, 10000.0]])
    use_abs_pe: bool = True  # anet_tsp
    max_seq_len: int = 768  # anet_tsp: the position encoding's table length (interpolated beyond it)
    dropout: float = 0.0  # default train_cfg.dropout (the MLP and projection dropout)
    droppath: float = 0.1  # default train_cfg.droppath
    cls_prior_prob: float = 0.01  # anet_tsp
    center_sample_radius: float = 1.5  # anet_tsp, in strides
    label_smoothing: float = 0.1  # anet_tsp
    focal_alpha: float = 0.25  # the release's sigmoid_focal_loss
    focal_gamma: float = 2.0  # the release's sigmoid_focal_loss
    loss_weight: float = 1.0  # default train_cfg.loss_weight (on the regression loss)
    init_loss_norm: float = 400.0  # anet_tsp
    loss_norm_momentum: float = 0.9  # the release's PtTransformer
    pre_nms_top_k: int = 2000  # anet_tsp test_cfg.pre_nms_topk, per pyramid level
    min_score: float = 0.001  # anet_tsp test_cfg.min_score (= the default pre_nms_thresh)


@dataclass
class CheckpointConfig:
    every_iters: int = 0
    keep: int = 2


@dataclass
class LogConfig:
    every_iters: int = 10
    progress: bool = True
    tensorboard: bool = True


@dataclass
class DistConfig:
    """torchrun process groups: a collective that waits longer than ``timeout_s`` seconds (a hung or dead rank)
    fails with an error on every rank instead of blocking the job."""
    timeout_s: float = 600.0


@dataclass
class Config:
    name: str = "demo"
    work_dir: str = "work_dirs"
    seed: int = 0
    deterministic: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    stages: List[Literal[STAGES]] = field(
        default_factory=lambda: ["acp", "lofi", "head", "eval"])
    max_bad_steps: int = 5
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    acp: ClsStageConfig = field(default_factory=ClsStageConfig)
    acp_plus: ClsStageConfig = field(default_factory=lambda: ClsStageConfig(epochs=2))
    arrow: ClsStageConfig = field(default_factory=ClsStageConfig)
    speed: SpeedStageConfig = field(default_factory=SpeedStageConfig)
    acp_arrow: AcpArrowStageConfig = field(default_factory=AcpArrowStageConfig)
    acp_speed: AcpSpeedStageConfig = field(default_factory=AcpSpeedStageConfig)
    lofi: LoFiStageConfig = field(default_factory=LoFiStageConfig)
    head: HeadStageConfig = field(default_factory=HeadStageConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    bmn: BMNConfig = field(default_factory=BMNConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    actionformer: ActionFormerConfig = field(default_factory=ActionFormerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    @property
    def run_dir(self) -> Path:
        """``work_dir/name``: everything a run writes."""
        return Path(self.work_dir) / self.name


# ---------------------------------------------------------------------------------------------------------- typing

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin in (list, List):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (a dataclass, scalar, Literal, Optional/Union or List); ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, "
                              f"got {value!r}")
        return _build(tp, value, key + ".")
    if origin is Union:
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # Optional[X]: X's own, more precise, error
            raise errors[0]
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_convert(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        number = value
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(number)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def _build(cls: type, values: Dict[str, Any], prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    errors = [f"{prefix}{k}: unknown key (valid keys here: {', '.join(sorted(names))})"
              for k in sorted(set(values) - names)]
    base = cls()
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, dict):
            # A partial mapping updates the defaults of this section (which may differ per stage).
            value = _merge(dataclasses.asdict(getattr(base, f.name)), value)
        try:
            kwargs[f.name] = _convert(value, hints[f.name], prefix + f.name)
        except ConfigError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError("\n  ".join(errors))
    return dataclasses.replace(base, **kwargs)


def _merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------------------------------------------------- loading

def _read_yaml(path: Path, seen: Sequence[Path] = ()) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"--config: no such file {path}")
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle through {[str(p) for p in seen]}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    return _merge(_read_yaml((path.parent / base).resolve(), (*seen, path)), data)


def _apply_override(tree: Dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. lofi.epochs=3")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {e}") from None
    node: Dict[str, Any] = tree
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[:depth + 1])}: is a value, so {key} cannot be set")
        node = child
    node[parts[-1]] = value


def _builds(values: Any, cls: type) -> bool:
    """Whether ``values`` is a mapping that builds a ``cls`` (known keys of the right types)."""
    try:
        _convert(values, cls, "")
    except ConfigError:
        return False
    return True


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (), *,
                stages: Optional[Sequence[str]] = None, world_size: int = 1, check_paths: bool = True) -> Config:
    """The config from ``path`` (default: the demo) with ``overrides`` applied, validated for ``stages``
    (default: ``cfg.stages``) at ``world_size`` processes. Raises ConfigError naming every bad key."""
    tree = _read_yaml(Path(path) if path else CONFIG_DIR / "demo.yaml")
    for item in overrides:
        _apply_override(tree, item)
    acp = tree.get("acp")
    for section, keys in FROM_ACP.items():
        own = tree.get(section)
        if _builds(acp, ClsStageConfig) and isinstance(own or {}, dict):  # a broken acp is reported once, as acp
            tree[section] = _merge({k: copy.deepcopy(acp[k]) for k in keys if k in acp}, own or {})
    try:
        cfg = _build(Config, tree)
    except ConfigError as e:
        raise ConfigError(f"invalid config:\n  {e}") from None
    validate(cfg, stages=stages, world_size=world_size, check_paths=check_paths)
    return cfg


def to_dict(cfg: Config) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_changes(old: Dict[str, Any], new: Dict[str, Any], ignore: Sequence[str] = ()) -> List[str]:
    """``"key: old -> new"`` for every dotted key whose value differs between two ``to_dict`` trees, skipping keys
    equal to or under an entry of ``ignore`` (dotted prefixes)."""
    out: List[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if any(key == i or key.startswith(i + ".") for i in ignore):
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{key}.{k}" if key else k)
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    walk(old, new, "")
    return out


# Keys that configs saved by earlier versions (in checkpoints and model.pt bundles) hold: renamed (→ the dotted key
# that replaces it) or removed (None).
LEGACY_KEYS = {"data.synthetic.fps": "data.synthetic.pack_fps", "eval.subset": None}


def upgrade(tree: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of a ``to_dict`` tree with its :data:`LEGACY_KEYS` renamed or dropped and every key that it lacks (one
    added since the tree was saved) at its default, which keeps what the version that wrote it did."""
    tree = copy.deepcopy(tree)
    for old, new in LEGACY_KEYS.items():
        *parents, leaf = old.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        if new is not None:
            *parents, leaf = new.split(".")
            target = tree
            for part in parents:
                target = target.setdefault(part, {})
            target.setdefault(leaf, value)
    return _with_defaults(tree, to_dict(Config()))


def _with_defaults(tree: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    """``tree`` with the keys of ``defaults`` it lacks added (recursively into sections both hold), in place."""
    for key, value in defaults.items():
        if key not in tree:
            tree[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(tree[key], dict):
            _with_defaults(tree[key], value)
    return tree


def from_dict(tree: Dict[str, Any]) -> Config:
    """A Config from ``to_dict`` output (e.g. the one stored in a checkpoint; its legacy keys upgraded); types are
    checked, paths are not."""
    return _build(Config, upgrade(tree))


# ---------------------------------------------------------------------------------------------------------- checks

def _positive(errors: List[str], key: str, value: Union[int, float, None], allow_zero: bool = False) -> None:
    if value is not None and not (value >= 0 if allow_zero else value > 0):  # NaN fails both
        errors.append(f"{key}: must be {'≥ 0' if allow_zero else '> 0'}, got {value}")


def _fraction(errors: List[str], key: str, value: float, low_closed: bool, high_closed: bool, what: str) -> None:
    """``value`` must lie in the interval from 0 to 1 with the given closed ends."""
    inside = (value >= 0 if low_closed else value > 0) and (value <= 1 if high_closed else value < 1)
    if not inside:
        errors.append(f"{key}: {what} must lie in {'[' if low_closed else '('}0, 1{']' if high_closed else ')'}, "
                      f"got {value}")


def _check_fidelity(errors: List[str], key: str, fid: FidelityConfig) -> None:
    for name in ("L", "T", "size"):
        _positive(errors, f"{key}.{name}", getattr(fid, name))
    _positive(errors, f"{key}.stride", fid.stride)


def _check_optim(errors: List[str], key: str, opt: OptimConfig) -> None:
    _positive(errors, f"{key}.lr", opt.lr)
    _positive(errors, f"{key}.weight_decay", opt.weight_decay, allow_zero=True)
    _fraction(errors, f"{key}.momentum", opt.momentum, True, False, "the momentum")
    _positive(errors, f"{key}.step_size", opt.step_size)
    _fraction(errors, f"{key}.gamma", opt.gamma, False, True, "the lr decay factor")
    _positive(errors, f"{key}.max_grad_norm", opt.max_grad_norm, allow_zero=True)


def _check_batch(errors: List[str], key: str, batch: BatchSize, world_size: int) -> None:
    if batch == "auto":
        return
    if batch <= 0:
        errors.append(f"{key}: must be > 0, got {batch}")
    elif batch % world_size:
        errors.append(f"{key}: the global batch {batch} does not divide by the world size {world_size} "
                      f"(torchrun --nproc_per_node); use a multiple of {world_size}")


def _local_or_remote(path: Optional[str]) -> bool:
    """An existing path, or a URL / pipe: source (checked when it is fetched)."""
    from lofi.data.remote import is_remote
    return path is not None and (is_remote(path) or Path(path).exists())


def _shards_problem(cfg: Config, path: Optional[str], subsets: Sequence[str]) -> Optional[str]:
    """Why ``path`` (a shard directory or brace pattern) will not hold shards of every one of ``subsets`` when the run
    starts, or None when it will. With data.synthetic.build, a directory without manifest.json is built first."""
    if path is None:
        return "is not set"
    from lofi.data.remote import is_remote
    if is_remote(path):
        return None  # a URL or pipe: source: its manifest is fetched and checked when the run starts
    if cfg.data.synthetic.build and not (Path(path) / "manifest.json").is_file():
        return None
    if not os.path.exists(path) and "{" not in path:
        return f"{path!r} does not exist"
    from lofi.data.shardlist import resolve
    for subset in subsets:
        try:
            paths, _ = resolve(path, subset)
        except (FileNotFoundError, ValueError) as e:
            return str(e)
        if not paths:
            return f"{path!r} holds no shards of subset {subset!r} ({subset}-*.tar)"
    return None


def validate(cfg: Config, stages: Optional[Sequence[str]] = None, world_size: int = 1, check_paths: bool = True) -> None:
    """Cross-field checks for running ``stages``; raises one ConfigError listing every problem."""
    stages = list(cfg.stages if stages is None else stages)
    errors: List[str] = []
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        errors.append(f"--stage: unknown stage(s) {unknown}; valid: {', '.join(STAGES)}, all")
    _positive(errors, "max_bad_steps", cfg.max_bad_steps)
    _check_fidelity(errors, "fidelity", cfg.fidelity)
    sch = cfg.lofi.schedule
    for name in ("r_t", "st_r_t", "c_s", "c_l"):
        _positive(errors, f"lofi.schedule.{name}", getattr(sch, name))
    for name in ("r_s", "st_r_s"):
        if not getattr(sch, name) >= 1:
            errors.append(f"lofi.schedule.{name}: a spatial reduction must be ≥ 1, got {getattr(sch, name)}")
    if sch.mode == "full" and "lofi" in stages:
        errors.append("lofi.schedule.mode: the lofi stage never trains at the full fidelity; choose s, t, st, "
                      "short_cycle or long_cycle")
    uses_t = sch.mode in ("t", "short_cycle", "long_cycle")
    uses_st = sch.mode in ("st", "short_cycle", "long_cycle")
    if uses_t and sch.r_t > 0 and cfg.fidelity.L % sch.r_t:
        errors.append(f"lofi.schedule.r_t: fidelity.L={cfg.fidelity.L} is not divisible by r_t={sch.r_t}")
    if uses_st and sch.st_r_t > 0 and cfg.fidelity.L % sch.st_r_t:
        errors.append(f"lofi.schedule.st_r_t: fidelity.L={cfg.fidelity.L} is not divisible by st_r_t={sch.st_r_t}")
    for row in table.TABLE:  # the sections of the training stages
        if not row.checkpoints:
            continue
        section = getattr(cfg, row.section)
        if isinstance(getattr(section, "fidelity", None), FidelityConfig):
            _check_fidelity(errors, f"{row.section}.fidelity", section.fidelity)
        _positive(errors, f"{row.section}.epochs", section.epochs, allow_zero=True)
        _check_batch(errors, f"{row.section}.batch_size", section.batch_size, world_size)
        _check_optim(errors, f"{row.section}.optim", section.optim)
        if isinstance(section, SpeedStageConfig):
            _check_speed(errors, row.section, section)
        _positive(errors, f"{row.section}.weight", getattr(section, "weight", None), allow_zero=True)
    _check_models(errors, cfg.model)
    for i, lr in enumerate(cfg.head.lr_search):
        _positive(errors, f"head.lr_search[{i}]", lr)
    _positive(errors, "head.cache_shard_size", cfg.head.cache_shard_size)
    if cfg.head.video_info and not cfg.head.features:
        errors.append("head.video_info: it gives the time base of external features; set head.features too")
    _positive(errors, "lofi.memory_budget_gib", cfg.lofi.memory_budget_gib)
    _check_batch(errors, "lofi.auto_global_batch", cfg.lofi.auto_global_batch, world_size)
    sigma = cfg.postprocess.sigma
    if not (sigma > 0 and math.isfinite(1 / sigma)):
        errors.append(f"postprocess.sigma: the soft-NMS width must be > 0 with a finite reciprocal, got {sigma}")
    _positive(errors, "postprocess.top_k", cfg.postprocess.top_k)
    for name in ("nms_low", "nms_high", "voting_iou"):
        _fraction(errors, f"postprocess.{name}", getattr(cfg.postprocess, name), True, True, "an IoU")
    _positive(errors, "postprocess.min_duration_s", cfg.postprocess.min_duration_s, allow_zero=True)
    _positive(errors, "postprocess.top_classes", cfg.postprocess.top_classes)
    for name in ("hidden_1d", "hidden_2d", "hidden_3d", "num_samples", "num_samples_per_bin"):
        _positive(errors, f"bmn.{name}", getattr(cfg.bmn, name))
    if cfg.bmn.hidden_1d % 4:
        errors.append(f"bmn.hidden_1d: the 1-D convs have 4 groups: must be a multiple of 4, got {cfg.bmn.hidden_1d}")
    if cfg.bmn.num_samples * cfg.bmn.num_samples_per_bin < 2:
        errors.append("bmn.num_samples: the BM layer needs num_samples·num_samples_per_bin ≥ 2 points, got "
                      f"{cfg.bmn.num_samples}·{cfg.bmn.num_samples_per_bin}")
    _positive(errors, "bmn.boundary_ratio", cfg.bmn.boundary_ratio, allow_zero=True)
    _positive(errors, "checkpoint.keep", cfg.checkpoint.keep)
    _positive(errors, "checkpoint.every_iters", cfg.checkpoint.every_iters, allow_zero=True)
    _positive(errors, "data.cache_max_gib", cfg.data.cache_max_gib)
    _positive(errors, "data.fetch_retries", cfg.data.fetch_retries, allow_zero=True)
    _positive(errors, "log.every_iters", cfg.log.every_iters)
    _positive(errors, "data.num_workers", cfg.data.num_workers, allow_zero=True)
    _positive(errors, "dist.timeout_s", cfg.dist.timeout_s)
    _fraction(errors, "data.max_corrupt_fraction", cfg.data.max_corrupt_fraction, True, True,
              "a share of the samples")
    syn = cfg.data.synthetic
    for key in ("size", "length", "distractors"):
        value = getattr(syn, key)
        if value is not None and (len(value) != 2 or min(value) < 0 or (key != "distractors" and min(value) == 0)):
            errors.append(f"data.synthetic.{key}: expected two {'non-negative' if key == 'distractors' else 'positive'} "
                          f"numbers, got {value}")
    _positive(errors, "model.checkpoint_chunks", cfg.model.checkpoint_chunks, allow_zero=True)
    for i, t in enumerate(cfg.eval.tiou):
        if not 0 < t <= 1:
            errors.append(f"eval.tiou[{i}]: a tIoU threshold must lie in (0, 1], got {t}")
    _check_actionformer(errors, cfg.actionformer)
    if check_paths:
        _check_paths(cfg, stages, errors)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _check_actionformer(errors: List[str], af: ActionFormerConfig) -> None:
    """The ActionFormer head's keys: pyramid shape, windows, widths, probabilities and loss constants."""
    key = "actionformer"
    if len(af.backbone_arch) != 3 or min(af.backbone_arch, default=0) < 1:
        errors.append(f"{key}.backbone_arch: expected 3 counts ≥ 1 (embedding convs, stem blocks, branch blocks), "
                      f"got {af.backbone_arch}")
        return
    levels = af.backbone_arch[2] + 1
    if len(af.n_mha_win_size) != levels:
        errors.append(f"{key}.n_mha_win_size: expected one window per pyramid level ({levels}), "
                      f"got {af.n_mha_win_size}")
    for i, w in enumerate(af.n_mha_win_size):
        if w != -1 and not (w >= 3 and w % 2):
            errors.append(f"{key}.n_mha_win_size[{i}]: a local attention window must be odd and ≥ 3, or -1 (global), "
                          f"got {w}")
    if len(af.regression_range) != levels:
        errors.append(f"{key}.regression_range: expected one [low, high] per pyramid level ({levels}), got "
                      f"{af.regression_range}")
    for i, r in enumerate(af.regression_range):
        if len(r) != 2 or not 0 <= r[0] < r[1]:
            errors.append(f"{key}.regression_range[{i}]: expected [low, high] snippets with 0 ≤ low < high, got {r}")
    for name in ("n_head", "embd_dim", "head_dim", "head_num_layers", "max_seq_len", "pre_nms_top_k",
                 "center_sample_radius", "init_loss_norm"):
        _positive(errors, f"{key}.{name}", getattr(af, name))
    if af.n_head > 0 and af.embd_dim % af.n_head:
        errors.append(f"{key}.embd_dim: {af.embd_dim} is not divisible by n_head={af.n_head}")
    for name in ("embd_kernel_size", "head_kernel_size"):
        if not (getattr(af, name) > 0 and getattr(af, name) % 2):
            errors.append(f"{key}.{name}: a kernel size must be odd and > 0, got {getattr(af, name)}")
    for name in ("dropout", "droppath", "label_smoothing", "loss_norm_momentum", "min_score"):
        _fraction(errors, f"{key}.{name}", getattr(af, name), True, False, "a probability or fraction")
    _fraction(errors, f"{key}.cls_prior_prob", af.cls_prior_prob, False, False, "a probability")
    _fraction(errors, f"{key}.focal_alpha", af.focal_alpha, True, True, "the focal loss's weight")
    _positive(errors, f"{key}.focal_gamma", af.focal_gamma, allow_zero=True)
    _positive(errors, f"{key}.loss_weight", af.loss_weight, allow_zero=True)


def _check_speed(errors: List[str], key: str, sc: SpeedStageConfig) -> None:
    """The rate and zoom ranges: [low, high] with 1 ≤ low ≤ high, every fast rate above every normal one."""
    for name in ("normal", "fast", "zoom"):
        value = getattr(sc, name)
        if len(value) != 2 or not 1 <= value[0] <= value[1]:
            errors.append(f"{key}.{name}: expected [low, high] with 1 <= low <= high, got {value}")
    if len(sc.normal) == len(sc.fast) == 2 and not sc.fast[0] > sc.normal[1]:
        errors.append(f"{key}.fast: the sped-up rates {sc.fast} must lie above the normal ones {key}.normal="
                      f"{sc.normal}")


def _check_models(errors: List[str], model: ModelConfig) -> None:
    """model.encoder and model.head name registered builders."""
    from lofi.models.registry import ENCODERS, HEADS  # torch: imported only when a config is validated
    for key, registry in (("encoder", ENCODERS), ("head", HEADS)):
        name = getattr(model, key)
        if name not in registry:
            errors.append(f"model.{key}: unknown {key} {name!r}; registered: {', '.join(registry)}")


def subset_names(cfg: Config, subsets: Sequence[str]) -> List[str]:
    """The table's subset roles ("train", "val") as this config's subset names."""
    return [cfg.data.train_subset if s == "train" else cfg.data.val_subset for s in subsets]


def _check_paths(cfg: Config, stages: Sequence[str], errors: List[str]) -> None:
    for key, subsets in table.shard_needs(stages, external_features=bool(cfg.head.features)).items():
        problem = _shards_problem(cfg, getattr(cfg.data, key), list(dict.fromkeys(subset_names(cfg, subsets))))
        if problem:
            shard_set = table.SHARD_SETS[key]
            need = (f"stage {', '.join(table.users(key, stages))} needs {shard_set.what}, and "
                    if shard_set.what else "")
            errors.append(f"data.{key}: {need}{problem} ({shard_set.hint})")
    for key, value in (("model.weights", cfg.model.weights), ("head.features", cfg.head.features),
                       ("head.annotations", cfg.head.annotations), ("head.video_info", cfg.head.video_info),
                       ("postprocess.classifier_file", cfg.postprocess.classifier_file)):
        if value is not None and not (os.path.exists(value) or key == "head.features" and _local_or_remote(value)):
            errors.append(f"{key}: no such file or directory {value!r}")
    if cfg.head.features and not cfg.head.annotations and not _local_or_remote(cfg.data.shards):
        errors.append("head.annotations: external features (head.features) need the annotations, either "
                      "an ActivityNet-format JSON here or data.shards")
