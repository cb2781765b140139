#!/usr/bin/env python
"""Times lofi.evaluation against a plain per-prediction loop of the same algorithm
(``lofi.evaluation_loop.loop_detection``).

Workloads on the v1.3 validation GT (4,728 videos), synthetic detections in the G-TAD output format (top-2 classes x
proposals per video; segments rounded to 0.01 s and scores to 1e-4, as OpenTAD writes them, which creates ties):
  (a) 4 proposals x 2 classes per video   ~38k predictions    goal <= 1 s
  (b) 100 proposals x 2 classes per video ~946k predictions   goal <= 10 s
The loop on (b) takes minutes, so it runs on ``--loop-classes`` classes only and is scaled by the share of
predictions those classes hold (stated in the table). Both sides start from loaded JSON dicts; the JSON parsing time
of the prediction file is reported separately. Detection results are checked to agree to 1e-9.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lofi import benchmark  # noqa: E402
from lofi.evaluation import evaluate_detection, evaluate_proposals  # noqa: E402
from lofi.evaluation_loop import loop_detection  # noqa: E402

GT = Path(os.environ.get("LOFI_SHARED", ROOT.parent / "shared")) / "data" / "activitynet" / "activity_net_v1-3_gt.json"


def synthetic_detections(gt: dict, proposals_per_video: int, seed: int, subset: str = "validation") -> dict:
    """G-TAD-like output: per video ``proposals_per_video`` segments (half near a GT, half random) x top-2 classes
    (the first GT's class 90% of the time); score = proposal score x class score."""
    rng = np.random.default_rng(seed)
    db = gt["database"]
    classes = sorted({a["label"] for v in db.values() if v["subset"] == subset for a in v["annotations"]})
    results = {}
    for vid, entry in db.items():
        if entry["subset"] != subset:
            continue
        duration = float(entry.get("duration") or 100.0)
        anns = entry["annotations"]
        n = proposals_per_video
        near = rng.random(n) < 0.5
        gt_seg = np.array([a["segment"] for a in anns] or [[0.0, duration]], np.float64)
        base = gt_seg[rng.integers(len(gt_seg), size=n)]
        length = np.maximum(base[:, 1] - base[:, 0], 1.0)
        jitter = np.sort(base + rng.normal(0.0, 0.15, (n, 2)) * length[:, None], axis=1)
        rand = np.sort(rng.uniform(0.0, duration, (n, 2)), axis=1)
        seg = np.clip(np.where(near[:, None], jitter, rand), 0.0, duration).round(2)
        prop_score = rng.random(n)
        top1 = anns[0]["label"] if anns and rng.random() < 0.9 else classes[rng.integers(len(classes))]
        top2 = classes[rng.integers(len(classes))]
        cls_score = sorted(rng.random(2), reverse=True)
        results[vid] = [{"label": label, "score": round(float(p * c), 4), "segment": s.tolist()}
                        for label, c in ((top1, cls_score[0]), (top2, cls_score[1]))
                        for p, s in zip(prop_score, seg)]
    return {"version": "ANET v1.3", "results": results, "external_data": {}}


def only_classes(pred: dict, keep: set) -> dict:
    return {"results": {v: [d for d in dets if d["label"] in keep] for v, dets in pred["results"].items()}}


def loop_seconds(gt: dict, pred: dict, classes: int) -> (float, str, float):
    """(seconds on all classes, how they were obtained, max |AP diff| on the classes run) of ``loop_detection``."""
    ours = evaluate_detection(gt, pred)
    names = list(ours["per_class_AP"])
    total = sum(len(d) for d in pred["results"].values())
    subset = pred if classes >= len(names) else only_classes(pred, set(names[:classes]))
    share = sum(len(d) for d in subset["results"].values()) / total
    start = time.perf_counter()
    ap, order = loop_detection(gt, subset)
    seconds = time.perf_counter() - start
    diff = max(abs(ap[t, c] - ours["per_class_AP"][name][t]) for c, name in enumerate(order)
               for t in range(ap.shape[0]) if c < classes)
    if subset is pred:
        return seconds, "measured", diff
    return seconds / share, f"estimated from {classes} classes ({100 * share:.1f}% of predictions)", diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", default=str(GT), help="ActivityNet v1.3 GT JSON")
    parser.add_argument("--loop-classes", type=int, default=10,
                        help="classes the per-prediction loop runs on for workload (b) (default 10; 200 = all: "
                             "minutes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = parser.parse_args()

    with open(args.gt) as f:
        gt = json.load(f)
    figures = []
    for name, per_video, loop_classes in (("a", 4, 200), ("b", 100, args.loop_classes)):
        pred = synthetic_detections(gt, per_video, args.seed)
        count = sum(len(d) for d in pred["results"].values())
        text = json.dumps(pred)
        parse = benchmark.median_seconds(lambda: json.loads(text), repeats=args.repeats, warmup=0)
        with tempfile.TemporaryDirectory() as tmp:  # the CLI's path: read, parse (keys given twice refused), score
            path = Path(tmp) / "results.json"
            path.write_text(text)
            from_file = benchmark.median_seconds(lambda: evaluate_detection(gt, path), repeats=args.repeats, warmup=0)
        detection = benchmark.median_seconds(lambda: evaluate_detection(gt, pred), repeats=args.repeats)
        proposals = benchmark.median_seconds(lambda: evaluate_proposals(gt, pred), repeats=args.repeats)
        loop, how, diff = loop_seconds(gt, pred, loop_classes)
        if diff > 1e-9:
            raise SystemExit(f"workload {name}: lofi.evaluation differs from the per-prediction loop by {diff}")
        figures.append({"workload": name, "predictions": count, "ours_detection_s": detection,
                        "ours_proposals_s": proposals, "json_parse_s": parse, "ours_from_file_s": from_file,
                        "loop_detection_s": loop,
                        "loop_how": how, "speedup": loop / detection, "max_ap_diff": diff})
        print(f"({name}) {count} predictions: ours {detection:.3f} s, loop {loop:.1f} s ({how})", flush=True)

    header = ["workload", "predictions", "lofi mAP (s)", "lofi AR@AN (s)", "JSON parse (s)", "lofi mAP from file (s)",
              "per-prediction loop mAP (s)", "speed-up", "max AP diff"]
    rows = [[f["workload"], f["predictions"], f"{f['ours_detection_s']:.3f}", f"{f['ours_proposals_s']:.3f}",
             f"{f['json_parse_s']:.2f}", f"{f['ours_from_file_s']:.2f}",
             f"{f['loop_detection_s']:.1f} ({f['loop_how']})",
             f"{f['speedup']:.0f}x", f"{f['max_ap_diff']:.1e}"] for f in figures]
    table = benchmark.markdown_table(header, rows)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": benchmark.machine(), "figures": figures}, indent=2))
    if not args.no_record:
        note = ("Goals: (a) <= 1 s, (b) <= 10 s for lofi mAP (from loaded JSON dicts; plain json.loads of the same "
                "text is listed apart). From file = evaluate_detection on the result file, as lofi.eval runs it: "
                "reading, parsing with the check for keys given twice, and scoring. Loop = "
                "lofi.evaluation_loop.loop_detection: the same "
                "algorithm one prediction at a time (NumPy per prediction, Python loops over GTs and "
                "thresholds); speed-up = loop / lofi mAP. "
                f"Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
        benchmark.record("ActivityNet evaluation (tools/bench_evaluation.py)", table + "\n\n" + note,
                         "python tools/bench_evaluation.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
