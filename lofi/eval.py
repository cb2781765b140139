"""ActivityNet evaluation CLI: detection mAP (default) or proposal AR@AN/AUC (``--proposals``) of a result JSON.

    python -m lofi.eval --gt GT.json --pred PRED.json [--subset validation] [--tiou 0.5:0.95:10] [--json]
                        [--blocked FILE] [--ignore-unknown-labels] [--nan-iou-as-zero] [--proposals]

Prints a table (percent), or with ``--json`` the result as JSON (fractions):
``{"tiou_thresholds": [...], "mAP": [...], "average_mAP": x, "per_class_AP": {label: [...]}}``; with ``--proposals``
``{"tiou_thresholds", "AR@AN": {AN: AR}, "AUC", ...}``. GT and result files may be gzipped (``.json.gz``). Exit
status 2 on bad input (including NaN/inf scores, a video listed twice, tIoU thresholds outside (0, 1]), with the reason
on stderr.
"""
import argparse
import json
import sys
from typing import List, Optional

import numpy as np

from lofi.evaluation import check_tiou_thresholds, evaluate_detection, evaluate_proposals


def parse_tiou(text: str) -> np.ndarray:
    """``START:STOP:NUM`` (``np.linspace``, so 0.5:0.95:10 is the official list), or comma-separated values; each
    in (0, 1]."""
    try:
        if ":" in text:
            start, stop, num = text.split(":")
            thr = np.linspace(float(start), float(stop), int(num))
        else:
            thr = np.array([float(x) for x in text.split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP:NUM or a comma list, got {text!r}") from None
    try:
        return check_tiou_thresholds(thr)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def detection_table(result: dict) -> str:
    thr = result["tiou_thresholds"]
    lines = ["tIoU     " + " ".join(f"{t:6.2f}" for t in thr) + "   average",
             "mAP (%)  " + " ".join(f"{100 * m:6.2f}" for m in result["mAP"])
             + f"   {100 * result['average_mAP']:6.2f}"]
    return "\n".join(lines)


def proposal_table(result: dict) -> str:
    ar = result["AR@AN"]
    points = [k for k in (1, 5, 10, 50, 100) if k in ar]
    return "\n".join(["AN       " + " ".join(f"{k:6d}" for k in points) + "   AUC",
                      "AR (%)   " + " ".join(f"{100 * ar[k]:6.2f}" for k in points) + f"   {100 * result['AUC']:6.2f}"])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lofi.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", required=True, help="ActivityNet-format GT JSON (.json or .json.gz)")
    parser.add_argument("--pred", required=True,
                        help="ActivityNet-format result JSON (detections or proposals; .json or .json.gz)")
    parser.add_argument("--subset", default="validation", help="GT subset (default validation)")
    parser.add_argument("--tiou", type=parse_tiou, default=parse_tiou("0.5:0.95:10"),
                        help="tIoU thresholds in (0, 1]: START:STOP:NUM (np.linspace) or a comma list "
                             "(default 0.5:0.95:10)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (fractions)")
    parser.add_argument("--blocked", help="blocked video ids (JSON list or one per line), dropped from GT and results")
    parser.add_argument("--ignore-unknown-labels", action="store_true",
                        help="drop predictions whose label is not a class of the GT subset (default: error)")
    parser.add_argument("--nan-iou-as-zero", action="store_true",
                        help="tIoU 0 for pairs with a zero union (zero-length vs zero-length) instead of the official "
                             "NaN, which matches at every threshold")
    parser.add_argument("--proposals", action="store_true", help="evaluate class-agnostic proposals: AR@AN and AUC")
    parser.add_argument("--max-proposals", type=float, default=100,
                        help="with --proposals: the largest average number of proposals per video (default 100)")
    args = parser.parse_args(argv)
    try:
        if args.proposals:
            result = evaluate_proposals(args.gt, args.pred, args.subset, args.max_proposals, args.tiou, args.blocked)
        else:
            result = evaluate_detection(args.gt, args.pred, args.subset, args.tiou, args.blocked,
                                        args.ignore_unknown_labels, args.nan_iou_as_zero)
    except (OSError, ValueError) as e:
        print(f"lofi.eval: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(proposal_table(result) if args.proposals else detection_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
