#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to graft's main job: set up, build, run
# graft demo (a new task learned from 5 labelled images per class: from scratch, by
# transfer, by fine-tuning; Fashion-MNIST from Debian's package, no network).
# Arguments go to graft demo, e.g. `bash scripts/demo.sh --sweep`.  The run folder and
# its report.html are in runs/demo.
set -euo pipefail
source "$(dirname "$0")/env.sh"
bash "$GRAFT_ROOT/scripts/setup.sh"
cmake -S "$GRAFT_ROOT" -B "$GRAFT_ROOT/build" -DCMAKE_BUILD_TYPE=Release -DGRAFT_TESTS=OFF >/dev/null
cmake --build "$GRAFT_ROOT/build" -j "$GRAFT_JOBS" >/dev/null
cd "$GRAFT_ROOT"
exec "$GRAFT_ROOT/build/graft" demo "$@"
