#!/usr/bin/env bash
# The main job, with all its set-up (venv, requirements, extension build).
# Until `lofi.train` lands this runs the kernel microbenchmarks; extra arguments go to them.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python tools/bench_sgalign.py "$@"
python tools/bench_soft_nms.py "$@"
