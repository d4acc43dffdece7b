#!/usr/bin/env bash
# Set everything up (scripts/setup.sh, idempotent), then run the fast test suite: every
# test under sim2real_bilevel/test except those marked slow, real DDS ones included.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k conversions`, a test file or
# `FILE::TEST` to run only that, or
# `bash scripts/test.sh -m slow` for the long runs).  Exit code: pytest's; a run that
# collected no test at all fails.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
export AMENT_PREFIX_PATH="$ROOT/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export ROS_LOG_DIR=${ROS_LOG_DIR:-$ROOT/build/ros_log}
markers=(-m "not slow")
targets=(sim2real_bilevel/test)
for argument in "$@"; do
    [[ $argument == -m ]] && markers=()        # the caller chose the markers
    [[ $argument != -* && -e ${argument%%::*} ]] && targets=()   # the caller named test files
done
mkdir -p "$ROS_LOG_DIR"
echo "[test] .venv/bin/python -m pytest $(printf '%q ' "${targets[@]}" "${markers[@]}" "$@")"
status=0
.venv/bin/python -m pytest "${targets[@]}" "${markers[@]}" -ra --durations=10 "$@" || status=$?
if [[ $status == 5 ]]; then
    echo "[test] error: pytest collected no test" >&2
    exit 1
fi
exit "$status"
