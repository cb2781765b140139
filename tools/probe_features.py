"""Linear probes of a run's frozen snippet features (lofi.probe): do they separate action from background, and the
classes?

    python tools/probe_features.py work_dirs/demo [work_dirs/other ...] [--json P]

``fg_auc``: ROC AUC of a logistic-regression actionness probe on the validation snippets (0.5: no actionness);
``class_acc``: nearest-class-mean accuracy on the validation segments. The demo's recipe was chosen with these
(docs/BENCHMARKS.md, "Demo recipe")."""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lofi.probe import probe_run  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (work_dirs/NAME) with a feature cache")
    p.add_argument("--json", type=Path, help="write {run: figures} here")
    args = p.parse_args(argv)
    out = {}
    for run in args.runs:
        r = out[str(run)] = probe_run(run)
        print(f"{run}: actionness probe AUC {r['fg_auc']:.3f} on validation ({r['fg_auc_train']:.3f} on training; "
              f"{100 * r['fg_fraction']:.0f}% foreground); segment class accuracy {100 * r['class_acc']:.0f}% "
              f"(chance {100 * r['class_chance']:.0f}%, {r['segments']} segments)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
