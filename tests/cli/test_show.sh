#!/usr/bin/env bash
# test_show.sh — contract of `graft show ARCH [--num-classes N] [--freeze PREFIX]...`:
# stdout is print(model) byte for byte (the torchvision fixture, which ends in "\n"),
# one empty line, then exactly "Total params: ...", "Trainable params: ...",
# "Frozen params: ..." with thousands separators; exit status 0; nothing on stderr.
# Runs from tests/ with GRAFT_BIN (the graft binary) and GRAFT_TMP (scratch dir).
set -euo pipefail

: "${GRAFT_BIN:?GRAFT_BIN must name the graft binary}"
: "${GRAFT_TMP:?GRAFT_TMP must name a scratch directory}"
PRINT=parity/fixtures/print

WORK=$(mktemp -d "$GRAFT_TMP/test_show.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# 138357544 -> 138,357,544
commas() {
    local n=$1 out=""
    while ((${#n} > 3)); do
        out=",${n: -3}$out"
        n=${n:0:${#n}-3}
    done
    printf '%s%s' "$n" "$out"
}

# Total parameter count of a fixture model from params.tsv.
total_of() {
    local n
    n=$(awk -F'\t' -v k="$1" '$1 == k { print $2 }' "$PRINT/params.tsv")
    [[ -n $n ]] || { echo "FAIL: no '$1' in $PRINT/params.tsv" >&2; exit 1; }
    printf '%s' "$n"
}

# run_show NAME ARGS... : runs `graft show ARGS`, leaving $WORK/NAME.{out,err};
# checks exit status 0 and an empty stderr.  Returns 1 (after reporting) otherwise.
run_show() {
    local name=$1
    shift
    local rc=0
    "$GRAFT_BIN" show "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    if ((rc != 0)); then
        fail "$name: 'graft show $*' exited with $rc: $(head -c 500 "$WORK/$name.err")"
        return 1
    fi
    if [[ -s $WORK/$name.err ]]; then
        fail "$name: 'graft show $*' wrote to stderr: $(head -c 500 "$WORK/$name.err")"
        return 1
    fi
    return 0
}

# expect_exact NAME FIXTURE TOTAL TRAINABLE : stdout must be the fixture, an empty line
# and the three count lines, byte for byte.
expect_exact() {
    local name=$1 fixture=$2 total=$3 trainable=$4
    local frozen=$((total - trainable))
    {
        cat "$fixture"
        printf '\nTotal params: %s\nTrainable params: %s\nFrozen params: %s\n' \
            "$(commas "$total")" "$(commas "$trainable")" "$(commas "$frozen")"
    } >"$WORK/$name.expected"
    if ! cmp -s "$WORK/$name.expected" "$WORK/$name.out"; then
        fail "$name: stdout differs from the expected output (fixture $fixture + counts):"
        diff "$WORK/$name.expected" "$WORK/$name.out" | head -20 >&2 || true
        return 1
    fi
    return 0
}

# Sanity checks of the helpers and fixtures themselves.
[[ $(commas 138357544) == "138,357,544" && $(commas 0) == "0" && $(commas 100) == "100" &&
    $(commas 1000) == "1,000" ]] || { echo "FAIL: commas() helper is broken" >&2; exit 1; }
[[ $(tail -c 1 "$PRINT/vgg16.txt" | od -An -c | tr -d ' ') == '\n' ]] ||
    { echo "FAIL: $PRINT/vgg16.txt does not end with a newline" >&2; exit 1; }

VGG16_TOTAL=$(total_of vgg16)
VGG16_FEATURES=14714688 # sum of numel of features.* in torchvision's vgg16
[[ $VGG16_TOTAL == 138357544 ]] || fail "params.tsv: vgg16 total is $VGG16_TOTAL, expected 138357544"

# 1. vgg16: the whole stdout, byte for byte, including the literal count lines.
if run_show vgg16 vgg16; then
    expect_exact vgg16 "$PRINT/vgg16.txt" "$VGG16_TOTAL" "$VGG16_TOTAL" || true
    tail -n 4 "$WORK/vgg16.out" >"$WORK/vgg16.tail"
    printf '\nTotal params: 138,357,544\nTrainable params: 138,357,544\nFrozen params: 0\n' >"$WORK/vgg16.tail.expected"
    cmp -s "$WORK/vgg16.tail.expected" "$WORK/vgg16.tail" ||
        fail "vgg16: last four lines are not the empty line and the literal counts: $(cat "$WORK/vgg16.tail")"
fi

# 2. vgg16 --num-classes 10: the head is Linear(4096 -> 10).
if run_show classes10 vgg16 --num-classes 10; then
    expect_exact classes10 "$PRINT/vgg16_classes10.txt" "$(total_of vgg16_classes10)" \
        "$(total_of vgg16_classes10)" || true
    grep -qF '(6): Linear(in_features=4096, out_features=10, bias=True)' "$WORK/classes10.out" ||
        fail "classes10: no '(6): Linear(in_features=4096, out_features=10, bias=True)' line"
fi
# The option may also come before the architecture.
if run_show classes10_first --num-classes 10 vgg16; then
    cmp -s "$WORK/classes10.out" "$WORK/classes10_first.out" ||
        fail "classes10_first: '--num-classes 10 vgg16' differs from 'vgg16 --num-classes 10'"
fi

# 3. Every zoo model prints as torchvision does, with its total count.
for arch in vgg11 vgg11_bn vgg13 vgg13_bn vgg16_bn vgg19 vgg19_bn; do
    if run_show "$arch" "$arch"; then
        t=$(total_of "$arch")
        expect_exact "$arch" "$PRINT/$arch.txt" "$t" "$t" || true
    fi
done

# 4. --freeze features moves the features' parameters from trainable to frozen.
if run_show freeze_features vgg16 --freeze features; then
    expect_exact freeze_features "$PRINT/vgg16.txt" "$VGG16_TOTAL" $((VGG16_TOTAL - VGG16_FEATURES)) || true
    tail -n 3 "$WORK/freeze_features.out" >"$WORK/freeze_features.tail"
    printf 'Total params: 138,357,544\nTrainable params: 123,642,856\nFrozen params: 14,714,688\n' \
        >"$WORK/freeze_features.tail.expected"
    cmp -s "$WORK/freeze_features.tail.expected" "$WORK/freeze_features.tail" ||
        fail "freeze_features: counts are $(tr '\n' ' ' <"$WORK/freeze_features.tail")"
fi

# 5. Several --freeze flags add up: features + classifier.0 (25088*4096 + 4096).
CLS0=$((25088 * 4096 + 4096))
if run_show freeze_two vgg16 --freeze features --freeze classifier.0; then
    expect_exact freeze_two "$PRINT/vgg16.txt" "$VGG16_TOTAL" $((VGG16_TOTAL - VGG16_FEATURES - CLS0)) || true
fi
# Overlapping prefixes count each parameter once.
if run_show freeze_overlap vgg16 --freeze features --freeze features.0 --freeze features; then
    expect_exact freeze_overlap "$PRINT/vgg16.txt" "$VGG16_TOTAL" $((VGG16_TOTAL - VGG16_FEATURES)) || true
fi
# Freezing the whole model ("" is the root) leaves nothing trainable.
if run_show freeze_all vgg16 --freeze ""; then
    expect_exact freeze_all "$PRINT/vgg16.txt" "$VGG16_TOTAL" 0 || true
fi

# 6. --freeze combined with --num-classes, on a BatchNorm model.
if run_show bn_freeze vgg11_bn --num-classes 10 --freeze features; then
    grep -qF '(6): Linear(in_features=4096, out_features=10, bias=True)' "$WORK/bn_freeze.out" ||
        fail "bn_freeze: head is not Linear(4096 -> 10)"
    # vgg11_bn features: vgg11_bn total - vgg11 total + vgg11 features (9,220,480)
    bn_features=$(($(total_of vgg11_bn) - $(total_of vgg11) + 9220480))
    bn_total=$(($(total_of vgg11_bn) - 4096 * 1000 - 1000 + 4096 * 10 + 10))
    tail -n 3 "$WORK/bn_freeze.out" >"$WORK/bn_freeze.tail"
    printf 'Total params: %s\nTrainable params: %s\nFrozen params: %s\n' "$(commas $bn_total)" \
        "$(commas $((bn_total - bn_features)))" "$(commas $bn_features)" >"$WORK/bn_freeze.tail.expected"
    cmp -s "$WORK/bn_freeze.tail.expected" "$WORK/bn_freeze.tail" ||
        fail "bn_freeze: counts are '$(tr '\n' ' ' <"$WORK/bn_freeze.tail")', expected '$(tr '\n' ' ' <"$WORK/bn_freeze.tail.expected")'"
fi

# 7. Custom specs print as the parity fixtures (torchvision's VGG class on small cfgs).
for name in plain32 bn32; do
    arch=$(case $name in
        plain32) echo 'vgg:cfg=8-M-16-M-16-16-M-32-M-32-M,hidden=32,pool=2,dropout=0.5' ;;
        bn32) echo 'vgg:cfg=8-M-16-16-M-32-M,bn,hidden=32,pool=3,dropout=0.5' ;;
    esac)
    if run_show "$name" "$arch" --num-classes 5; then
        t=$(total_of "$name")
        expect_exact "$name" "$PRINT/$name.txt" "$t" "$t" || true
    fi
done

# 8. --help succeeds on stdout.
if run_show help --help; then
    grep -q '^usage: graft show' "$WORK/help.out" || fail "help: no usage line on stdout"
fi

if ((failures)); then
    echo "test_show: $failures failure(s)" >&2
    exit 1
fi
echo "test_show: all checks passed"
