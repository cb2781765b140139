#!/usr/bin/env bash
# The test suite, with all its set-up (venv, requirements, extension build). Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest -q "$@"
