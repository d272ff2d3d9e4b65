#!/usr/bin/env bash
# The device check (bench/device_check.py): at most about 5 minutes on one GPU; --dry-run runs the
# same code at tiny sizes on any machine. Needs only `pip install -e '.[gpu]'` (or '.' on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec "${PYTHON:-python}" bench/device_check.py "$@"
