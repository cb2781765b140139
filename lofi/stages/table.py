"""The stage table: every stage of the pipeline, declared once, in the order a run executes them.

Config validation (:mod:`lofi.config`), resume (:mod:`lofi.stages.resume`), the demo's data building and the stage
dispatch of ``lofi.train`` read this table. A new stage is a new module with ``run(ctx)`` plus one :class:`Stage` row
(plus a config section dataclass in :class:`lofi.config.Config` when it has settings). This module imports neither
torch nor any stage module, so the config can read it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

# Config keys any stage may change on resume: where and how a run runs and logs, not what it computes.
RUN_KEYS = ("name", "work_dir", "stages", "device", "max_bad_steps", "data.synthetic.build", "checkpoint", "log",
            "dist", "data.max_corrupt_fraction")


@dataclass(frozen=True)
class ShardNeed:
    """Shards a stage reads: the ``data.<key>`` directory, holding the ``subsets`` named by ``data.train_subset``
    ("train") and ``data.val_subset`` ("val"). ``external_features``: ``head.features`` replaces them."""
    key: str
    subsets: Tuple[str, ...]
    external_features: bool = False


@dataclass(frozen=True)
class ShardSet:
    """A shard directory of ``data.<key>``: what a stage needs it for (named in errors), how to make it (a hint
    appended to errors) and how the synthetic benchmark builds it: (its videos, its annotations, the packing
    format), the keys of ``lofi.data.synthetic.make_synthetic``'s result and ``make_shards``' ``fmt``."""
    what: Optional[str]
    hint: str
    synthetic: Tuple[str, str, str]


SHARD_SETS: Dict[str, ShardSet] = {
    "clip_shards": ShardSet("classification shards", "make them with tools/make_shards.py --format clips, or drop acp "
                            "and set model.weights", ("clips", "clip_list", "clips")),
    "shards": ShardSet(None, "make the shards with tools/make_shards.py", ("videos", "annotations", "activitynet")),
}


@dataclass(frozen=True)
class Stage:
    """One stage. ``name``: the ``--stage`` name; ``module``: the module whose ``run(ctx)`` runs it; ``section``: its
    config section (None: no settings of its own); ``reads``: sections of later stages that it reads too (the head
    stage validates with the post-processing and the tIoU thresholds); ``encoder_from``: the earlier stages whose
    ``encoder.pt`` it starts from, newest first (model.weights when none exists); ``checkpoints``: it trains with
    checkpoints in its folder (``--resume``/``--overwrite`` apply); ``outputs``: the files it writes, relative to the
    run directory (those outside its folder are deleted with its checkpoints by ``--overwrite``); ``data``: the
    shards it reads."""
    name: str
    module: str
    section: Optional[str]
    outputs: Tuple[str, ...]
    data: Tuple[ShardNeed, ...] = ()
    encoder_from: Tuple[str, ...] = ()
    reads: Tuple[str, ...] = ()
    checkpoints: bool = True


TRAIN, VAL = ("train",), ("val",)
# The stages that pretrain an encoder on the clip set (data.clip_shards) from model.weights, newest first: ACP and
# the self-supervised pretext tasks (lofi.stages.pretext), alone or added to ACP's loss.
CLIP_PRETRAINING = ("acp+speed", "acp+arrow", "speed", "arrow", "acp")
TABLE: Tuple[Stage, ...] = (
    Stage("acp", "lofi.stages.classification", "acp", ("acp/encoder.pt",), (ShardNeed("clip_shards", TRAIN),)),
    Stage("arrow", "lofi.stages.pretext", "arrow", ("arrow/encoder.pt",), (ShardNeed("clip_shards", TRAIN),)),
    Stage("speed", "lofi.stages.pretext", "speed", ("speed/encoder.pt",), (ShardNeed("clip_shards", TRAIN),)),
    Stage("acp+arrow", "lofi.stages.pretext", "acp_arrow", ("acp_arrow/encoder.pt",),
          (ShardNeed("clip_shards", TRAIN),)),
    Stage("acp+speed", "lofi.stages.pretext", "acp_speed", ("acp_speed/encoder.pt",),
          (ShardNeed("clip_shards", TRAIN),)),
    Stage("acp+", "lofi.stages.classification", "acp_plus", ("acp_plus/encoder.pt",), (ShardNeed("shards", TRAIN),),
          encoder_from=CLIP_PRETRAINING),
    Stage("lofi", "lofi.stages.end_to_end", "lofi", ("lofi/encoder.pt",), (ShardNeed("shards", TRAIN),),
          encoder_from=("acp+", *CLIP_PRETRAINING)),
    Stage("head", "lofi.stages.head", "head", ("model.pt",),
          (ShardNeed("shards", TRAIN + VAL, external_features=True),),
          encoder_from=("lofi", "acp+", *CLIP_PRETRAINING), reads=("postprocess", "eval")),
    Stage("eval", "lofi.stages.eval", "eval", ("eval/detections.json", "eval/proposals.json", "eval/timelines.png",
                                               "curves.png"),
          (ShardNeed("shards", VAL, external_features=True),), reads=("postprocess",), checkpoints=False),
)
STAGES: Dict[str, Stage] = {s.name: s for s in TABLE}


def stage_names() -> Tuple[str, ...]:
    """The stages' ``--stage`` names in run order."""
    return tuple(STAGES)


def get(name: str) -> Stage:
    """The row of stage ``name``; KeyError naming the table's stages."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; valid: {', '.join(STAGES)}")
    return STAGES[name]


def stage_key(name: str) -> str:
    """The config section (and folder under the run directory) of a stage (``acp+`` → ``acp_plus``)."""
    return get(name).section or name


def downstream(name: str) -> Tuple[str, ...]:
    """The config sections that only the stages after ``name`` read: its result does not depend on them."""
    row = get(name)
    own = {row.section, *row.reads}
    later = TABLE[TABLE.index(row) + 1:]
    return tuple(dict.fromkeys(s for r in later for s in (r.section, *r.reads) if s is not None and s not in own))


def resume_free(name: str) -> Tuple[str, ...]:
    """The config keys (dotted prefixes) that may differ between a checkpoint of stage ``name`` and the run that
    continues it under ``--resume auto``: :data:`RUN_KEYS` and the :func:`downstream` sections."""
    return (*RUN_KEYS, *downstream(name))


def recipe_free(stages: Sequence[str]) -> Tuple[str, ...]:
    """The config keys (dotted prefixes) the result of running ``stages`` in order does not depend on:
    :data:`RUN_KEYS` and the sections that neither these stages nor the ones they take an encoder from read. An
    experiment runner compares the rest to tell whether a finished run still holds its recipe's result."""
    used = set(stages) | {prev for s in stages for prev in get(s).encoder_from}
    read = {sec for s in used for sec in (get(s).section, *get(s).reads) if sec is not None}
    unread = [sec for r in TABLE for sec in (r.section, *r.reads) if sec is not None and sec not in read]
    return (*RUN_KEYS, *dict.fromkeys(unread))


def recipe(tree: Dict[str, Any], stages: Sequence[str]) -> Dict[str, Any]:
    """The part of a resolved config (a ``lofi.config.to_dict`` tree) that the result of running ``stages``
    depends on: a copy without the :func:`recipe_free` keys."""
    out = copy.deepcopy(tree)
    for key in recipe_free(stages):
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return out


def shard_needs(stages: Sequence[str], external_features: bool) -> Dict[str, List[str]]:
    """{``data`` key: the subsets ("train", "val"), in order} that running ``stages`` reads, in table order;
    shards that ``head.features`` replaces are left out when ``external_features``."""
    needs: Dict[str, List[str]] = {}
    for row in TABLE:
        if row.name not in stages:
            continue
        for need in row.data:
            if not (need.external_features and external_features):
                subsets = needs.setdefault(need.key, [])
                subsets += [s for s in need.subsets if s not in subsets]
    return needs


def users(key: str, stages: Sequence[str]) -> List[str]:
    """The stages of ``stages`` that read ``data.<key>``."""
    return [r.name for r in TABLE if r.name in stages and any(n.key == key for n in r.data)]
