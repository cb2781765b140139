"""Packing on many machines: part I of N of the videos, and the merge of the parts' manifests into one.

``make_shards(..., part=(I, N))`` (1 ≤ I ≤ N) packs the videos :func:`select_part` gives part I: every video of the
packed subsets is dealt, longest first (ties by subset and id), to the part with the least video so far (ties to
the lowest part), so the parts hold about equal seconds of video whatever their count of videos. The part's shards
are named ``{subset}-pIIofNN-{NNNNNN}.tar`` and its manifest ``manifest-pIIofNN.json``, so the N parts can run at
once into one shared output directory; each resumes after a kill like a whole run. :func:`merge_parts` checks that
all N parts are complete (every shard present with its sha256) and with the same settings, then writes the one
``manifest.json`` (atomically) that the reader checks.
"""
from __future__ import annotations

import json
import logging
import pathlib
import re

from ..atomic import write_json
from ..hashing import sha256_file
from .annotations import VideoRecord
from .packing import _SHARD_RE, MANIFEST

log = logging.getLogger(__name__)

_PART_MANIFEST_RE = re.compile(r"^manifest-p(?P<part>\d+)of(?P<parts>\d+)\.json$")


def check_part(part: tuple[int, int]) -> None:
    index, count = part
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"part {index} of {count}: expected 1 <= part <= num_parts")


def part_tag(part: tuple[int, int] | None) -> str:
    """The infix of part ``(I, N)``'s shard names ("-p01of03"), "" for a whole run."""
    return "" if part is None else f"-p{part[0]:02d}of{part[1]:02d}"


def part_manifest_name(part: tuple[int, int] | None) -> str:
    """``manifest.json`` for a whole run, ``manifest-pIIofNN.json`` for a part."""
    return MANIFEST if part is None else f"manifest{part_tag(part)}.json"


def owned_by(name: str, part: tuple[int, int] | None) -> bool:
    """Whether a file of the output directory (a shard, a manifest, or a temporary one of either) belongs to
    ``part``; a whole run owns every file."""
    base = name.split(".tmp-")[0]
    match = _SHARD_RE.match(base)
    return part is None or base == part_manifest_name(part) or bool(match and match["part"] == part_tag(part))


def select_part(records: list[VideoRecord], part: tuple[int, int]) -> list[VideoRecord]:
    """The records of part ``(I, N)`` (see the module docstring). A record's weight is its annotated duration, else
    its clip's length, else the mean of the known ones (seconds)."""
    check_part(part)
    index, count = part

    def known(r: VideoRecord) -> float | None:
        return r.duration if r.duration else (r.clip[1] - r.clip[0] if r.clip else None)

    lengths = [d for d in map(known, records) if d]
    default = sum(lengths) / len(lengths) if lengths else 1.0
    load, chosen = [0.0] * count, []
    for record in sorted(records, key=lambda r: (-(known(r) or default), r.subset, r.id)):
        target = min(range(count), key=lambda i: (load[i], i))
        load[target] += known(record) or default
        if target == index - 1:
            chosen.append(record)
    return chosen


def merge_parts(out_dir) -> dict:
    """Checks the N parts of ``out_dir`` and writes its ``manifest.json``: the classes and settings the parts share,
    every split's shards and counts, the skipped videos and warnings of all parts, ``num_parts`` and ``complete``.
    Raises ``ValueError`` naming each missing or incomplete part, missing or altered shard, or differing setting.
    Shards that no part lists (an earlier run's) are deleted."""
    out_dir = pathlib.Path(out_dir)
    found = sorted(p.name for p in out_dir.glob("manifest-p*of*.json") if _PART_MANIFEST_RE.match(p.name))
    if not found:
        raise ValueError(f"{out_dir}: no part manifests manifest-pIIofNN.json (pack with --part I --num-parts N)")
    counts = sorted({int(_PART_MANIFEST_RE.match(n)["parts"]) for n in found})
    if len(counts) > 1:
        raise ValueError(f"{out_dir}: parts of different --num-parts {counts} ({', '.join(found)}); "
                         "remove the ones of the old split")
    count, problems, parts = counts[0], [], []
    for index in range(1, count + 1):
        path = out_dir / part_manifest_name((index, count))
        where = f"part {index} of {count} ({path})"
        if not path.is_file():
            problems.append(f"{where} is missing: run make_shards with --part {index} --num-parts {count}")
            continue
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{where} is unreadable: {e}")
            continue
        if not manifest.get("complete"):
            problems.append(f"{where} is incomplete: run its --part {index} again to finish it")
        for split in manifest.get("splits", {}).values():
            for name, entry in split["shards"].items():
                if not (out_dir / name).is_file():
                    problems.append(f"{where}: shard {out_dir / name} is missing")
                elif sha256_file(out_dir / name) != entry["sha256"]:
                    problems.append(f"{where}: shard {out_dir / name} does not match its sha256")
        settings = {k: v for k, v in manifest.get("settings", {}).items() if k != "part"}
        if parts and settings != parts[0][1]:
            changed = sorted(k for k in settings.keys() | parts[0][1].keys() if settings.get(k) != parts[0][1].get(k))
            problems.append(f"{where} was packed with other settings than part 1: {changed}")
        parts.append((manifest, settings))
    if problems:
        raise ValueError(f"cannot merge {out_dir}: " + "; ".join(problems))
    first = parts[0][0]
    merged = {k: v for k, v in first.items() if k not in ("part", "splits", "skipped", "warnings", "empty_shards")}
    merged.update(splits={}, skipped=[], warnings=[], empty_shards={}, settings={**parts[0][1], "num_parts": count},
                  num_parts=count, complete=True)
    for manifest, _ in parts:
        for subset, split in manifest.get("splits", {}).items():
            into = merged["splits"].setdefault(subset, {"num_samples": 0, "shards": {}})
            into["shards"].update(split["shards"])
            into["num_samples"] += split["num_samples"]
        merged["skipped"] += manifest.get("skipped", [])
        merged["warnings"] += manifest.get("warnings", [])
        merged["empty_shards"].update(manifest.get("empty_shards", {}))
    for split in merged["splits"].values():
        split["shards"] = dict(sorted(split["shards"].items()))
    listed = {name for split in merged["splits"].values() for name in split["shards"]}
    for path in sorted(out_dir.glob("*.tar")):
        if _SHARD_RE.match(path.name) and path.name not in listed:
            log.info("%s: removing %s (no part lists it)", out_dir, path.name)
            path.unlink()
    write_json(merged, out_dir / MANIFEST, indent=1)
    return merged
