#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to graft's main job: set up, build, run.
set -euo pipefail
source "$(dirname "$0")/env.sh"
bash "$GRAFT_ROOT/scripts/setup.sh"
cmake -S "$GRAFT_ROOT" -B "$GRAFT_ROOT/build" -DCMAKE_BUILD_TYPE=Release -DGRAFT_TESTS=OFF >/dev/null
cmake --build "$GRAFT_ROOT/build" -j "$GRAFT_JOBS" >/dev/null
"$GRAFT_ROOT/build/graft" show vgg16 --num-classes 10 --freeze features
