#!/usr/bin/env bash
# The one script for the lent GPU machine (one H100, Python 3.12, torch 2.11+cu130 preinstalled, no package index,
# no DALI). Builds lofi._C against that torch, runs the `cuda` tests, then the benchmarks in priority order, and
# writes summary.md, summary.json and one log per step into OUTDIR. Budget: 5 minutes in all.
#   usage: bash tools/gpu_check.sh OUTDIR
# Wheels carried in .whl/ (PyAV, webdataset, braceexpand; tools/compat_check.sh fetches them and tests this stack
# on the CPU) are installed into /tmp/site first.
# Next, on the same warm machine (it is released after about 30 s idle), the reproduction study's gpu preset uses the
# extension built here and writes only cell JSONs (copy them to docs/results/gpu/, then tools/report_study.py):
#   PYTHONPATH=/tmp/site:. python3 tools/reproduce.py --preset gpu --out "$OUT/gpu" --max-minutes 4.5
set -uo pipefail
OUTDIR="${1:?usage: tools/gpu_check.sh OUTDIR}"
cd "$(dirname "$0")/.."
mkdir -p "$OUTDIR"
export MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
START=$(date +%s)
: > "$OUTDIR/steps.tsv"

# step NAME TIMEOUT_S CMD... : runs CMD with a timeout, logs to OUTDIR/NAME.log, records rc and seconds.
# The whole script stays within BUDGET_S: each step's limit is cut to what is left, and a step with nothing left is
# recorded as skipped (rc 124).
BUDGET_S=${BUDGET_S:-290}
step() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  local left=$(( BUDGET_S - (t0 - START) ))
  (( left < limit )) && limit=$left
  if (( limit <= 0 )); then
    printf '%s\t124\t0\n' "$name" >> "$OUTDIR/steps.tsv"; echo "== $name skipped (budget spent)"; return 124
  fi
  timeout "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$OUTDIR/steps.tsv"
  echo "== $name rc=$rc ($(( $(date +%s) - t0 )) s)"; tail -n 25 "$OUTDIR/$name.log"
  return $rc
}

if compgen -G ".whl/*.whl" > /dev/null; then
  step wheels 60 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
step env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; $PY -c 'import torch; print(torch.__version__, torch.version.cuda)'"
step build 150 $PY setup.py build_ext --inplace || { echo "build failed"; }
step tests_cuda 120 $PY -m pytest -m cuda -q -x -p no:cacheprovider
step bench_sgalign 45 $PY tools/bench_sgalign.py --device cuda --json "$OUTDIR/bench_sgalign.json"
step bench_soft_nms 30 $PY tools/bench_soft_nms.py --device cuda --json "$OUTDIR/bench_soft_nms.json"
# A few LoFi training steps per fidelity (synthetic shards, cpu data backend via the carried PyAV/webdataset wheels):
# videos/s and peak CUDA memory at the paper's fidelities (S 100x8@112, T 25x8@224, ST 50x8@158); JSON summary only.
step lofi_train 120 $PY tools/bench_train.py --device cuda --L 100 --T 8 --size 224 --batch 2 --steps 3 --videos 6 \
  --workers 8 --amp --json "$OUTDIR/bench_train.json"
cp docs/BENCHMARKS.md "$OUTDIR/BENCHMARKS.md" 2>/dev/null

$PY - "$OUTDIR" "$START" <<'PYEOF'
import json, os, sys, time
out, start = sys.argv[1], int(sys.argv[2])
steps = [dict(zip(("step", "rc", "seconds"), line.split("\t"))) for line in open(os.path.join(out, "steps.tsv")) if line.strip()]
benches = {}
for name in sorted(os.listdir(out)):
    if name.startswith("bench_") and name.endswith(".json"):
        benches[name[:-5]] = json.load(open(os.path.join(out, name)))
summary = {"total_seconds": int(time.time()) - start, "steps": steps, "benchmarks": benches}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
lines = ["# gpu_check summary", "", f"total {summary['total_seconds']} s", "", "| step | rc | s |", "|---|---|---|"]
lines += [f"| {s['step']} | {s['rc']} | {s['seconds'].strip()} |" for s in steps]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
