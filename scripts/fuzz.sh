#!/usr/bin/env bash
# Builds graft's libFuzzer targets with clang (ASan + UBSan) and runs each for a while.
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, all targets)
# Corpora live in build-fuzz/corpus/<target> (seeded from the test fixtures); a crash
# leaves build-fuzz/crash-* to turn into a regression test.
set -euo pipefail
source "$(dirname "$0")/env.sh"
seconds="${1:-60}"; shift || true
bash "$GRAFT_ROOT/scripts/setup.sh"
for p in clang libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="${missing:-} $p"
done
if [ -n "${missing:-}" ]; then
  as_root=(); [ "$(id -u)" -ne 0 ] && as_root=(sudo)
  "${as_root[@]}" apt-get install -y -qq $missing >/dev/null
fi
dir="$GRAFT_ROOT/build-fuzz"
CC=clang cmake -S "$GRAFT_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGRAFT_FUZZ=ON >/dev/null
cmake --build "$dir" -j "$GRAFT_JOBS" >/dev/null
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=($(cd "$dir/tests/fuzz" && ls fuzz_* | grep -v '\.'))
for t in "${targets[@]}"; do
  corpus="$dir/corpus/$t"
  mkdir -p "$corpus"
  case "$t" in
    fuzz_safetensors) seeds="$GRAFT_ROOT/tests/parity/fixtures/vgg" ;;
    fuzz_pickle|fuzz_pth) seeds="$GRAFT_ROOT/tests/parity/fixtures/pth" ;;
    *) seeds="" ;;
  esac
  echo "== $t for ${seconds}s"
  (cd "$dir" && "./tests/fuzz/$t" -max_total_time="$seconds" -max_len=1048576 -rss_limit_mb=2048 -timeout=10 \
     -print_final_stats=1 "$corpus" $seeds 2>&1 | grep -E '^(stat::|#[0-9]+ +DONE|==[0-9]+==ERROR|SUMMARY)' || true)
done
