"""docs/RESULTS.md of the reproduction study (lofi.study): per preset, the tables of the cells' results (mean ± std
over seeds, Δ against the row's frozen ACP, whether it exceeds the seed spread, the paired Δ per seed), the paper's
numbers beside them, the commands, plots, and the preset's hand-written ``NOTES.md`` verbatim; then the memory table.
Units: mAP in %, memory in bytes (GiB in the tables), times in seconds."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from lofi.atomic import write_bytes
from lofi.study import (AVG_ONLY_TABLES, CONTROL_TABLES, PAPER, PRESETS, ROWS, STUDY_DIR, TABLE_ROWS, TABLE_TITLES,
                        load_cells)

METRICS = ("mAP@0.5", "mAP@0.75", "mAP@0.95", "avg")


def mean_std(values: Sequence[float]) -> tuple:
    """(mean, sample std; 0 for one value)."""
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, s


def summarize(cells: Sequence[dict]) -> Dict[str, dict]:
    """{row: {label, n, seeds, by_seed {seed: avg}, mean {metric}, std {metric}, mAP_curve (mean per tIoU),
    seconds (mean cell wall time), clip_accuracy {stage: {name: (mean, std, n)}} (the held-out accuracies of the
    row's own clip stages)}}. The cells of a row must share its label (one definition of the row)."""
    by_row: Dict[str, List[dict]] = {}
    for c in cells:
        by_row.setdefault(c["row"], []).append(c)
    out = {}
    for row, cs in by_row.items():
        labels = {c["label"] for c in cs}
        if len(labels) > 1:
            raise ValueError(f"row {row}: cells of different definitions {sorted(labels)}; re-run or remove the "
                             "old ones")
        stats = {k: mean_std([c["metrics"][k] for c in cs]) for k in METRICS}
        curve = [mean_std([c["metrics"]["mAP"][i] for c in cs]) for i in range(len(cs[0]["metrics"]["mAP"]))]
        out[row] = {"label": labels.pop(), "n": len(cs), "seeds": sorted(c["seed"] for c in cs),
                    "by_seed": {c["seed"]: c["metrics"]["avg"] for c in cs},
                    "mean": {k: v[0] for k, v in stats.items()}, "std": {k: v[1] for k, v in stats.items()},
                    "curve": curve, "tiou": cs[0]["metrics"]["tiou_thresholds"],
                    "seconds": mean_std([c["seconds"]["cell"] for c in cs])[0],
                    "baseline": mean_std([c["metrics"]["baseline_avg"] for c in cs])[0],
                    "clip_accuracy": clip_accuracy(cs)}
    return out


def clip_accuracy(cells: Sequence[dict]) -> Dict[str, Dict[str, tuple]]:
    """{stage: {name: (mean, std, seeds)}} over the cells' held-out clip accuracies (fractions; ``val_clips`` left
    out), e.g. ``arrow``'s ``val_pretext_accuracy`` and its per-class ``val_pretext_accuracy/<class>``."""
    values: Dict[str, Dict[str, List[float]]] = {}
    for c in cells:
        for stage, accs in (c.get("clip_accuracy") or {}).items():
            for name, v in accs.items():
                if name != "val_clips":
                    values.setdefault(stage, {}).setdefault(name, []).append(v)
    return {stage: {name: (*mean_std(vs), len(vs)) for name, vs in names.items()} for stage, names in values.items()}


def cell_encoder(cell: dict) -> str:
    """The encoder a cell ran with (its recorded config; cells of earlier runners recorded a ``recipe``)."""
    return (cell.get("config") or cell["recipe"])["model"]["encoder"]


def versus(summary: Dict[str, dict], row: str, ref: str = "acp", metric: str = "avg") -> Optional[dict]:
    """Difference of ``row`` from ``ref`` in ``metric`` and whether it exceeds the seed spread: |Δ| > std_row +
    std_ref (both over seeds). With fewer than 2 seeds on either side there is no spread: ``exceeds`` is None."""
    if row not in summary or ref not in summary or row == ref:
        return None
    a, b = summary[row], summary[ref]
    diff = a["mean"][metric] - b["mean"][metric]
    spread = a["std"][metric] + b["std"][metric]
    exceeds = abs(diff) > spread if min(a["n"], b["n"]) >= 2 else None
    return {"diff": diff, "spread": spread, "exceeds": exceeds}


def paired(summary: Dict[str, dict], row: str, ref: str) -> List[float]:
    """avg mAP of ``row`` minus ``ref`` seed by seed, over their common seeds (a seed's rows share its ACP encoder,
    so these differences do not carry the ACP-to-ACP variation that the spread rule includes)."""
    a, b = summary[row]["by_seed"], summary[ref]["by_seed"]
    return [a[k] - b[k] for k in sorted(a) if k in b]


def _pm(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def ours_table(summary: Dict[str, dict], rows: Sequence[str]) -> str:
    lines = ["| row | seeds | mAP@0.5 | mAP@0.75 | mAP@0.95 | average mAP | Δ avg vs ACP | exceeds seed spread? | "
             "paired Δ per seed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r not in summary:
            continue
        s = summary[r]
        ref = ROWS[r].baseline
        v = versus(summary, r, ref)
        delta = "—" if v is None else f"{v['diff']:+.2f} (spread {v['spread']:.2f})" + (
            "" if ref == "acp" else f" vs {summary[ref]['label']}")
        exceeds = "—" if v is None else {None: "n/a (1 seed)", True: "yes", False: "no"}[v["exceeds"]]
        d = [] if v is None else paired(summary, r, ref)
        pairs = f"{', '.join(f'{x:+.2f}' for x in d)} ({sum(x > 0 for x in d)} of {len(d)} > 0)" if d else "—"
        cells = " | ".join(_pm(s["mean"][k], s["std"][k], s["n"]) for k in METRICS)
        lines.append(f"| {s['label']} | {s['n']} | {cells} | {delta} | {exceeds} | {pairs} |")
    return "\n".join(lines)


def clip_accuracy_table(summary: Dict[str, dict], rows: Sequence[str]) -> Optional[str]:
    """Markdown: per row and clip stage of its own (ACP+, the pretext stages), the held-out accuracies on the source
    set's validation clips in % (mean ± std over seeds); None when no row has one."""
    def pct(stat):
        return _pm(100 * stat[0], 100 * stat[1], stat[2])
    lines = []
    for r in (r for r in rows if r in summary):
        for stage, accs in summary[r]["clip_accuracy"].items():
            overall = " | ".join(pct(accs[k]) if k in accs else "—" for k in ("val_accuracy", "val_pretext_accuracy"))
            by_class = ", ".join(f"{k.split('/', 1)[1]} {pct(v)}" for k, v in sorted(accs.items()) if "/" in k)
            lines.append(f"| {summary[r]['label']} | `{stage}` | {max(v[2] for v in accs.values())} | {overall} | "
                         f"{by_class or '—'} |")
    if not lines:
        return None
    return "\n".join(["| row | stage | seeds | class accuracy | pretext accuracy | pretext accuracy per source class |",
                      "|---|---|---|---|---|---|"] + lines)


def paper_table(rows: Sequence[str], table: str) -> str:
    def fmt(v):
        return "–" if v is None else f"{v:.2f}"
    if table in AVG_ONLY_TABLES:
        lines = ["| row (paper, ActivityNet-1.3) | average mAP |", "|---|---|"]
        lines += [f"| {ROWS[r].label} | {fmt(PAPER[r][0][3])} |" for r in rows if r in PAPER]
        return "\n".join(lines)
    lines = ["| row (paper) | ANet @0.5 | @0.75 | @0.95 | avg | HACS @0.5 | @0.75 | @0.95 | avg |",
             "|---|" + "---|" * 8]
    for r in rows:
        if r in PAPER:
            anet, hacs = PAPER[r]
            label = "ICP (ImageNet weights)" if r == "icp" else ROWS[r].label
            lines.append(f"| {label} | " + " | ".join(fmt(v) for v in anet + (hacs or [None] * 4)) + " |")
    return "\n".join(lines)


def memory_rows(memory: dict) -> List[dict]:
    """bench_memory's budget rows plus C-LoFi (its per-video memory is the largest of S/T/ST's, batch constant)."""
    rows = list(memory.get("budget", []))
    for enc in sorted({r["encoder"] for r in rows}):
        lofi = [r for r in rows if r["encoder"] == enc and r["config"] in ("S-LoFi", "T-LoFi", "ST-LoFi")]
        if len(lofi) == 3:
            worst = max(lofi, key=lambda r: r["per_video_bytes"])
            rows.append({**worst, "config": "C-LoFi (long/short)", "fidelity": f"cycles S/T/ST (max {worst['config']})",
                         "max_batch": min(r["max_batch"] for r in lofi)})
    return rows


def memory_table(memory: dict) -> str:
    gib = 2 ** 30
    full = {r["encoder"]: r["per_video_bytes"] for r in memory.get("budget", []) if r["config"] == "full"}
    budget = memory["budget_gib"]
    lines = [f"| config | encoder | L×T×H² | per video (GiB) | × full | largest batch in {budget:g} GiB |",
             "|---|---|---|---|---|---|"]
    for r in memory_rows(memory):
        ratio = r["per_video_bytes"] / full[r["encoder"]] if r["encoder"] in full else float("nan")
        lines.append(f"| {r['config']} | {r['encoder']} | {r['fidelity']} | {r['per_video_bytes'] / gib:.2f} | "
                     f"{ratio:.2f} | {r['max_batch']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- plots

def plot_all(cells: Sequence[dict], summary: Dict[str, dict], memory: Optional[dict], out: Path) -> List[Path]:
    """The study's PNGs in ``out``: mAP vs tIoU per row, memory per configuration, training curves, and the
    GT-vs-detection timelines of ACP and LoFi on the same videos (first seed that has both)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lofi.engine.plots import plot_timelines
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in (r for r in ROWS if r in summary):
        s = summary[row]
        ax.errorbar(s["tiou"], [m for m, _ in s["curve"]], yerr=[sd for _, sd in s["curve"]], marker="o",
                    markersize=3, capsize=2, label=f"{s['label']} (n={s['n']})")
    ax.set_xlabel("tIoU threshold")
    ax.set_ylabel("mAP (%)")
    ax.set_title("mAP vs tIoU (mean ± std over seeds)")
    ax.legend(fontsize=6)
    paths.append(_save(fig, out / "map_vs_tiou.png"))

    if memory:
        rows = [r for r in memory_rows(memory) if r["encoder"] == "tsm_r18"] or memory_rows(memory)
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.bar([r["config"] for r in rows], [r["per_video_bytes"] / 2 ** 30 for r in rows], color="tab:blue")
        for i, r in enumerate(rows):
            ax.text(i, r["per_video_bytes"] / 2 ** 30, f"batch {r['max_batch']}", ha="center", va="bottom", fontsize=7)
        ax.set_ylabel("training memory per video (GiB)")
        ax.set_title(f"{rows[0]['encoder']}: per-video memory, largest batch in {memory['budget_gib']:g} GiB")
        ax.tick_params(axis="x", labelsize=7)
        paths.append(_save(fig, out / "memory.png"))

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 3.8))
    for c in sorted(cells, key=lambda c: (c["row"], c["seed"])):
        lab = f"{c['row']} s{c['seed']}"
        if c["curves"]["lofi_loss"]:
            x, y, _ = zip(*c["curves"]["lofi_loss"])
            a0.plot(x, y, label=lab, linewidth=1)
        if c["curves"]["head_val_mAP"]:
            x, y = zip(*c["curves"]["head_val_mAP"])
            a1.plot(x, y, label=lab, linewidth=1)
    a0.set(title="LoFi stage: training loss (TAL)", xlabel="optimizer step")
    a1.set(title="head stage: validation average mAP (%)", xlabel="epoch")
    for a in (a0, a1):
        if a.lines:
            a.legend(fontsize=5, ncol=2)
    paths.append(_save(fig, out / "training_curves.png"))

    by = {(c["row"], c["seed"]): c for c in cells}
    seeds = sorted(s for (r, s) in by if r == "acp" and ("long_c_lofi", s) in by)
    if seeds:  # the same videos (first validation ids) for both rows, the first seed that has both
        for row in ("acp", "long_c_lofi"):
            tl = by[(row, seeds[0])]["timelines"]
            paths.append(plot_timelines(tl, {t["id"]: t["detections"] for t in tl}, out / f"timelines_{row}.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------- report

def render_results(sections: Dict[str, dict], memory: Optional[dict]) -> str:
    """docs/RESULTS.md: one section per preset (``{preset: {summary, cells, notes, plots}}``), the memory table."""
    lines = ["# Reproduction study: LoFi on the synthetic TAL benchmark",
             "",
             "Generated by `tools/report_study.py` from the cell JSONs under `docs/results/<preset>/` "
             "(one per row × seed); "
             "do not edit by hand: notes go in `docs/results/<preset>/NOTES.md`, which is copied here.",
             "",
             "**Our numbers are on the synthetic benchmark (`lofi.data.synthetic`), not on ActivityNet or HACS.** The "
             "paper's numbers are shown beside them, labelled, for reference only: they are ActivityNet-1.3 / HACS-1.1 "
             "numbers from the LoFi paper (Xu et al., NeurIPS 2021) and are not comparable in absolute value.",
             "",
             "mAP in %; mean ± sample std over seeds (a seed re-runs every stage of its row after the shared ACP "
             "pretraining of that seed). *Exceeds seed spread* = |Δ avg mAP vs ACP| > std(row) + std(ACP); "
             "a deeper encoder's LoFi row is compared with the frozen ACP of the same encoder. *Paired Δ per seed*: "
             "the row minus that ACP within each seed (rows of a seed start from the same ACP encoder).",
             ""]
    for preset, sec in sections.items():
        summary, cells = sec["summary"], sec["cells"]
        p = PRESETS.get(preset) if (STUDY_DIR / preset).is_dir() else None
        lines += [f"## Preset `{preset}`", ""]
        lines += [f"Configs: one per row in `lofi/configs/study/{preset}/`, the preset's scale in its `_base.yaml`; "
                  "the notes below describe it.", ""] if p else [
            f"Archived: cells of an earlier recipe, kept for the record; `{preset}` is not a current preset, so they "
            "cannot be re-run as they are. The notes below give the recipe and the investigation.", ""]
        secs = [c["seconds"]["cell"] for c in cells]
        if secs:
            lines += [f"{len(cells)} cells; wall time per cell {min(secs):.0f}-{max(secs):.0f} s "
                      f"(mean {sum(secs) / len(secs):.0f} s) on {sec.get('machine', 'this machine')}; "
                      "validation videos "
                      f"per cell: {sorted({c['metrics']['num_videos'] for c in cells})}; uniform-random-proposal "
                      f"baseline avg mAP {sum(c['metrics']['baseline_avg'] for c in cells) / len(cells):.2f}."]
            acp = sorted({round(c["upstream"]["acp_seconds"]) for c in cells if c["upstream"].get("acp_seconds")})
            if acp:
                lines[-1] += (f" The shared ACP pretraining (once per seed and encoder, not in the cell times) took "
                              f"{', '.join(map(str, acp))} s.")
            accs = {(cell_encoder(c), c["seed"], c["upstream"]["acp_val_accuracy"]) for c in cells
                    if c["upstream"].get("acp_val_accuracy") is not None}
            if accs:
                lines[-1] += (" Its validation accuracy on the source clips: "
                              f"{', '.join(f'{100 * a:.1f}% ({e} seed {s})' for e, s, a in sorted(accs))}.")
            lines.append("")
        shown: set = set()
        for t in TABLE_ROWS:
            rows = [r for r in TABLE_ROWS[t] if r in summary]
            lines += [f"### {TABLE_TITLES[t]}", ""]
            if len(rows) < 2 or set(rows) <= shown:
                lines += [f"Not run on this preset (its rows present here: {', '.join(rows) or 'none'}, "
                          "all shown above).", ""]
                continue
            shown |= set(rows)
            lines += ["Ours (synthetic benchmark):", "", ours_table(summary, rows), ""]
            accuracy = clip_accuracy_table(summary, rows)
            if accuracy:
                lines += ["Held-out accuracy (%) of each row's own clip stage on the source set's validation clips "
                          "(a pretext task's chance: 50%):", "", accuracy, ""]
            if t not in CONTROL_TABLES:
                lines += ["The paper's numbers (ActivityNet-1.3 / HACS-1.1, from the paper, **not ours**):", "",
                          paper_table(rows, t), ""]
        if p:  # an archived folder has no command that would re-run its recipe
            lines += ["### Commands (one per number)", "",
                      "Every row (all its seeds) is reproduced by one command; a single number (one cell) by the same "
                      "command with one seed. Finished cells are skipped while their row's config gives the config "
                      "they recorded; otherwise they run again through `python -m lofi.train --resume auto` (afresh "
                      "where it refuses the checkpoints). Delete a cell's JSON to re-run it anyway. The report: "
                      "`python tools/report_study.py`.", ""]
            for row in (r for r in ROWS if r in summary):
                lines.append(f"- {summary[row]['label']} (`lofi/configs/study/{preset}/{row}.yaml`): "
                             f"`python tools/reproduce.py --preset {preset} --rows {row} "
                             f"--seeds {','.join(str(s) for s in summary[row]['seeds'])}`")
            lines.append("")
        for png in sec.get("plots", []):
            lines += [f"![{png.stem}](results/{preset}/{png.name})", ""]
        if sec.get("notes"):
            lines += ["### Notes and investigation", "", sec["notes"].strip(), ""]
    if memory:
        lines += ["## Memory: per-video training memory and the largest batch in "
                  f"{memory['budget_gib']:g} GiB (paper's settings: L=100, T=8, 224²)", "",
                  f"From `tools/bench_memory.py --budget-gib {memory['budget_gib']:g}` on {memory['device']} "
                  f"(saved-activation bytes of encoder + fused G-TAD head, fp32; SGAlign: {memory['sgalign_path']}); "
                  "C-LoFi cycles through S/T/ST at a constant batch, so its memory is their maximum. "
                  "Command: `python tools/bench_memory.py --budget-gib 32`.", "",
                  memory_table(memory), "", claim_one(memory), ""]
    return "\n".join(lines)


def claim_one(memory: dict, gpus: int = 4, batch: int = 16) -> str:
    """The paper's claim 1 checked on the memory table: does a global batch of 16 fit 4 GPUs of the budget?"""
    out = []
    for r in memory_rows(memory):
        fits = r["max_batch"] * gpus
        out.append(f"{r['config']} ({r['encoder']}): {fits} videos on {gpus} GPUs "
                   f"({'fits' if fits >= batch else 'does not fit'} the paper's batch {batch})")
    return (f"The paper's claim 1 on {gpus} × {memory['budget_gib']:g} GiB (4 V100s): " + "; ".join(out) + ".")


def write_results(results_root: Path, doc: Path) -> str:
    """Aggregates every preset under ``results_root`` (docs/results) into ``doc`` (docs/RESULTS.md) with plots."""
    sections = {}
    memory = None
    for d in sorted(p for p in Path(results_root).iterdir() if p.is_dir()):
        cells = load_cells(d)
        mem_path = d / "memory.json"
        mem = json.loads(mem_path.read_text()) if mem_path.is_file() else None
        memory = memory or mem
        if not cells:
            continue
        summary = summarize(cells)
        notes = (d / "NOTES.md").read_text() if (d / "NOTES.md").is_file() else ""
        machine = (d / "machine.txt").read_text().strip() if (d / "machine.txt").is_file() else None
        plots = plot_all(cells, summary, mem, d)
        sections[d.name] = {"summary": summary, "cells": cells, "notes": notes, "plots": plots,
                            **({"machine": machine} if machine else {})}
    text = render_results(sections, memory)
    write_bytes(doc, text)
    return text
