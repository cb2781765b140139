#!/usr/bin/env bash
# The main job, with all its set-up (venv, pinned requirements, lofi._C): the demo end to end on the synthetic
# benchmark. Builds shards/demo (synthetic videos, TAL and classification shards) when missing, then runs the
# stages acp → lofi → head → eval of lofi/configs/demo.yaml, prints the mAP table (with the classifier used and a
# uniform-random-proposal baseline evaluated the same way) and where the plots and checkpoints are.
# Extra arguments go to `python -m lofi.train` (e.g. config overrides such as lofi.epochs=6). Run again, it resumes
# (`--resume auto`): finished stages are kept and eval runs again; `--overwrite` starts the stages afresh instead.
DEMO_START=$(date +%s)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
resume=(--resume auto)
for arg in "$@"; do
  case "$arg" in --overwrite|--resume|--resume=*) resume=() ;; esac
done
python -m lofi.train "${resume[@]}" "$@"
echo "demo finished in $(( $(date +%s) - DEMO_START )) s (set-up included)"
