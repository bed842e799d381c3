#!/usr/bin/env bash
# test_bench.sh — the output contract of `graft bench` that bench/compare.py relies on:
# exit 0, and the result alone on the last line of stdout ("images_per_s N" for
# features/eval/train-step, "seconds N" for recipe, "gflops_per_s N" for gemm), with
# "peak_rss_mb N" on the line before; usage errors exit 2 with one line on stderr; recipe
# leaves no temporary files.  Timings are never checked (tests never time anything), only
# that they are positive numbers.  Small models keep it fast.
# Runs from tests/ with GRAFT_BIN (the graft binary) and GRAFT_TMP (scratch dir).
set -euo pipefail

: "${GRAFT_BIN:?GRAFT_BIN must name the graft binary}"
: "${GRAFT_TMP:?GRAFT_TMP must name a scratch directory}"

WORK=$(mktemp -d "$GRAFT_TMP/test_bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

SMALL='vgg:cfg=8-M-16-M,hidden=16'

# expect_result NAME KEY ARGS... : runs `graft bench ARGS`; the last line must be "KEY <positive number>"
# and the one before "peak_rss_mb <positive number>".
expect_result() {
    local name=$1 key=$2
    shift 2
    if ! "$GRAFT_BIN" bench "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"; then
        fail "$name: exit status $? ($(head -c 300 "$WORK/$name.err"))"
        return
    fi
    local last before
    last=$(tail -n 1 "$WORK/$name.out")
    before=$(tail -n 2 "$WORK/$name.out" | head -n 1)
    [[ $last =~ ^$key\ [0-9]+(\.[0-9]+)?$ ]] || fail "$name: last line is '$last', not '$key N'"
    awk -v v="${last#* }" 'BEGIN { exit !(v > 0) }' || fail "$name: '$last' is not positive"
    [[ $before =~ ^peak_rss_mb\ [0-9]+(\.[0-9]+)?$ ]] || fail "$name: line before the last is '$before'"
}

# 1. Each mode's contract.
expect_result features images_per_s features --model "$SMALL" --batch 2 --iters 2 --warmup 1
expect_result eval images_per_s eval --model "$SMALL" --num-classes 3 --size 16 --batch 2 --iters 1
expect_result train_step images_per_s train-step --model "$SMALL" --num-classes 3 --batch 4 --iters 3 --threads 2
expect_result train_all images_per_s train-step --model "$SMALL" --num-classes 3 --batch 4 --iters 1 --freeze none
expect_result gemm gflops_per_s gemm --size 64 --iters 2
expect_result recipe seconds recipe --model "$SMALL" --epochs 1 --train 70 --test 10 --batch 16 --threads 2
expect_result recipe_nocache seconds recipe --model "$SMALL" --epochs 2 --train 40 --test 8 --no-feature-cache

# 2. recipe cleans up its temporary data set and run folder.
left=$(find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'graft-bench-*' -newer "$WORK" 2>/dev/null | head -n 1)
[[ -z $left ]] || fail "recipe left $left behind"

# 3. Usage errors: exit 2, one line on stderr naming the problem, nothing on stdout.
expect_usage() {
    local name=$1 pattern=$2
    shift 2
    local rc=0
    "$GRAFT_BIN" bench "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    ((rc == 2)) || fail "$name: exit status $rc, expected 2"
    [[ ! -s $WORK/$name.out ]] || fail "$name: wrote to stdout"
    [[ $(wc -l <"$WORK/$name.err") -eq 1 ]] || fail "$name: stderr is not one line"
    grep -q -- "$pattern" "$WORK/$name.err" || fail "$name: stderr does not mention '$pattern'"
}
expect_usage no_mode 'which benchmark'
expect_usage bad_mode "unknown benchmark 'warp'" warp --model vgg16
expect_usage no_model '--model is required' features
expect_usage bad_batch "--batch: '0'" features --model vgg16 --batch 0
expect_usage no_test "--test: '0'" recipe --test 0
expect_usage bad_option "'--frobnicate'" features --model vgg16 --frobnicate

# 4. --help succeeds on stdout.
"$GRAFT_BIN" bench --help >"$WORK/help.out" 2>&1 || fail "help: non-zero exit"
grep -q '^usage: graft bench' "$WORK/help.out" || fail "help: no usage line"

if ((failures)); then
    echo "test_bench: $failures failure(s)" >&2
    exit 1
fi
echo "test_bench: all checks passed"
