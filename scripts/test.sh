#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to graft's whole test suite:
# set up, then build and test twice — warnings as errors, and with ASan + UBSan —
# and check that an installed libgraft is usable through pkg-config.
set -euo pipefail
source "$(dirname "$0")/env.sh"
bash "$GRAFT_ROOT/scripts/setup.sh" --tests
export CTEST_OUTPUT_ON_FAILURE=1

build_and_test() { # dir, cmake args...
  local dir="$1"; shift
  cmake -S "$GRAFT_ROOT" -B "$dir" -DGRAFT_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j "$GRAFT_JOBS" 2>&1 | grep -v '^\[' || true
  test -x "$dir/graft"
  (cd "$dir" && ctest -j "$GRAFT_JOBS")
}

echo "== release build, -Werror"
build_and_test "$GRAFT_ROOT/build-ci" -DCMAKE_BUILD_TYPE=Release

echo "== ASan + UBSan build"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  build_and_test "$GRAFT_ROOT/build-asan" -DCMAKE_BUILD_TYPE=Debug -DGRAFT_SANITIZE=ON

echo "== install and use through pkg-config"
prefix="$(mktemp -d)"
trap 'rm -rf "$prefix"' EXIT
cmake --install "$GRAFT_ROOT/build-ci" --prefix "$prefix" >/dev/null
cat > "$prefix/use.c" <<'C'
#include <graft/graft.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    graft_model *m;
    graft_model_options o = graft_model_defaults();
    o.num_classes = 10;
    o.init = 0;
    if (graft_model_create("vgg16", &o, &m)) { fprintf(stderr, "%s\n", graft_errmsg()); return 1; }
    int ok = graft_model_num_classes(m) == 10;
    graft_model_free(m);
    return ok ? 0 : 1;
}
C
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig:$prefix/lib/$(gcc -print-multiarch)/pkgconfig"
cc -std=c11 "$prefix/use.c" -o "$prefix/use-shared" $(pkg-config --cflags --libs graft)
LD_LIBRARY_PATH="$(pkg-config --variable=libdir graft)" "$prefix/use-shared"
# libgraft.a with the shared libraries of its dependencies (Debian ships those)
cc -std=c11 "$prefix/use.c" -o "$prefix/use-static" $(pkg-config --cflags graft) \
  "$(pkg-config --variable=libdir graft)/libgraft.a" $(pkg-config --libs openblas jansson libcurl libcrypto libarchive libpng libjpeg zlib) -lpthread -lm
"$prefix/use-static"
echo "install check passed"
