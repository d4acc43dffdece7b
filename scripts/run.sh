#!/usr/bin/env bash
# Set everything up (scripts/setup.sh, idempotent), then run the main job: the sim-only
# bi-level loop on the discrete 3-state 2-action example through the full ROS 2 node graph
# (simulator, inner trainer, sensitivity, outer optimizer, hardware bridge, robot
# emulator), with progress on the terminal.  Writes runs/<problem>-<time>/: results.json,
# results.png, the MCAP rosbag2 folder bag/ and report.png drawn from the bag.
#
# Extra arguments are launch arguments NAME:=VALUE and override the defaults, e.g.
#   bash scripts/run.sh seed:=3          bash scripts/run.sh problem:=lqr
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
export AMENT_PREFIX_PATH="$ROOT/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"

problem=discrete_3s2a
run_dir=""
for argument in "$@"; do
    case $argument in
        problem:=*) problem=${argument#problem:=} ;;
        run_dir:=*) run_dir=${argument#run_dir:=} ;;
    esac
done
if [[ -z $run_dir ]]; then
    run_dir="runs/$(basename "${problem%.yaml}")-$(date +%Y%m%d-%H%M%S)"
    set -- "$@" "run_dir:=$run_dir"
fi
case $run_dir in
    /*) run_path=$run_dir ;;
    *) run_path=$ROOT/$run_dir ;;
esac
export ROS_LOG_DIR=${ROS_LOG_DIR:-$run_path/ros_log}

echo "[run] .venv/bin/sim2real-bilevel launch sim_only problem:=$problem $*"
.venv/bin/sim2real-bilevel launch sim_only "problem:=$problem" "$@"
echo "[run] .venv/bin/sim2real-bilevel report $run_dir"
.venv/bin/sim2real-bilevel report "$run_dir"
