# Sourced by tools/demo.sh and tools/test.sh: makes .venv, installs the pinned requirements and
# builds the lofi._C extension in place (incremental). Safe to run again; it only does what is missing.
set -euo pipefail
LOFI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$LOFI_ROOT"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check -r requirements.txt
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
mkdir -p build
if ! python setup.py build_ext --inplace > build/build.log 2>&1; then
  tail -n 60 build/build.log; echo "tools/env.sh: building lofi._C failed (full log: build/build.log)" >&2; exit 1
fi
python -c "import lofi.ops as o; assert o.available(), 'lofi._C did not build'; print('lofi._C built; CUDA kernels:', o.cuda_compiled())"
