"""Writes docs/RESULTS.md (and the plots under docs/results/<preset>/) from the reproduction study's cell JSONs.

    python tools/report_study.py [--results docs/results] [--doc docs/RESULTS.md]

Every folder of --results is a preset (cells ``<row>-seed<k>.json``, optional ``NOTES.md``, ``machine.txt``,
``memory.json``); a folder that is no current preset of lofi.study is reported as archived. Nothing is re-run.
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lofi.study_report import write_results  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=REPO / "docs" / "results",
                   help="one folder of cell JSONs per preset")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "RESULTS.md", help="the markdown file to write")
    args = p.parse_args(argv)
    if not args.results.is_dir():
        print(f"report_study: --results: no such folder {args.results}", file=sys.stderr)
        return 2
    write_results(args.results, args.doc)
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
