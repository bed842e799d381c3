#!/usr/bin/env bash
# test_errors.sh — contract of graft's failures: every bad argument or bad file gives a
# non-zero exit status, exactly one line on stderr naming the offending argument or
# file, nothing on stdout, and no output file (nor "*.tmp.*" leftover) behind.
# Runs from tests/ with GRAFT_BIN (the graft binary) and GRAFT_TMP (scratch dir).
set -euo pipefail

: "${GRAFT_BIN:?GRAFT_BIN must name the graft binary}"
: "${GRAFT_TMP:?GRAFT_TMP must name a scratch directory}"
VGG=parity/fixtures/vgg

WORK=$(mktemp -d "$GRAFT_TMP/test_errors.XXXXXX")
trap '[[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"' EXIT
OUTDIR=$WORK/out # the only place --output points to; must stay empty
mkdir "$OUTDIR"

PLAIN='vgg:cfg=8-M-16-M-16-16-M-32-M-32-M,hidden=32,pool=2,dropout=0.5'
W_PLAIN=$VGG/plain32_eval.weights.safetensors
IO_PLAIN=$VGG/plain32_eval.io.safetensors
W_BN=$VGG/bn32_eval.weights.safetensors
for f in "$W_PLAIN" "$IO_PLAIN" "$W_BN"; do
    [[ -f $f ]] || { echo "FAIL: fixture $f is missing (run from tests/)" >&2; exit 1; }
done

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# expect_error NAME NEEDLE... -- ARGS...
# Runs `graft ARGS`; checks a non-zero status, nothing on stdout, exactly one line on
# stderr containing every NEEDLE (fixed strings), an empty $OUTDIR (no output file, no
# temporary file) and no $OUTDIR/out.safetensors.
expect_error() {
    local name=$1
    shift
    local needles=()
    while [[ $1 != -- ]]; do
        needles+=("$1")
        shift
    done
    shift
    local rc=0
    "$GRAFT_BIN" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    local err
    err=$(head -c 2000 "$WORK/$name.err")
    if ((rc == 0)); then
        fail "$name: 'graft $*' exited with status 0 (stderr: $err)"
    fi
    if ((rc >= 128)); then
        fail "$name: 'graft $*' died from a signal (status $rc; stderr: $err)"
    fi
    if [[ -s $WORK/$name.out ]]; then
        fail "$name: 'graft $*' wrote to stdout: $(head -c 300 "$WORK/$name.out")"
    fi
    local lines
    lines=$(wc -l <"$WORK/$name.err")
    if [[ $lines -ne 1 || $(tail -c 1 "$WORK/$name.err" | od -An -c | tr -d ' ') != '\n' ]]; then
        fail "$name: expected exactly one newline-terminated line on stderr, got $lines: $err"
    fi
    local needle
    for needle in "${needles[@]}"; do
        grep -qF -- "$needle" "$WORK/$name.err" ||
            fail "$name: stderr does not mention '$needle': $err"
    done
    if [[ -e $OUTDIR/out.safetensors ]]; then
        fail "$name: the output file $OUTDIR/out.safetensors was created"
    fi
    local left
    left=$(find "$OUTDIR" -mindepth 1 | head -5) # the output, a "*.tmp.*" file, anything
    if [[ -n $left ]]; then
        fail "$name: files left in the output directory: $left"
    fi
    rm -rf "$OUTDIR"
    mkdir "$OUTDIR"
}

OUT=$OUTDIR/out.safetensors

# write_f32_safetensors PATH NAME SHAPE_JSON NBYTES: a valid safetensors file holding one
# zero float32 tensor NAME of the given shape (NBYTES = 4 * numel).
write_f32_safetensors() {
    local path=$1 name=$2 shape=$3 nbytes=$4
    local header="{\"$name\":{\"dtype\":\"F32\",\"shape\":$shape,\"data_offsets\":[0,$nbytes]}}"
    while ((${#header} % 8)); do header+=' '; done
    local n=${#header}
    # 8-byte little-endian header length (the format string is built on purpose)
    # shellcheck disable=SC2059
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o\\000\\000\\000\\000' \
        $((n & 255)) $(((n >> 8) & 255)) $(((n >> 16) & 255)) $(((n >> 24) & 255)))" >"$path"
    printf '%s' "$header" >>"$path"
    head -c "$nbytes" /dev/zero >>"$path"
}

# ---- show ----------------------------------------------------------------------

expect_error show_unknown_arch nosuchnet -- show nosuchnet
expect_error show_bad_spec 'vgg:cfg=8-bad-M' -- show 'vgg:cfg=8-bad-M'
expect_error show_bad_spec_key 'vgg:cfg=8-M,wings=2' -- show 'vgg:cfg=8-M,wings=2'
expect_error show_num_classes_zero --num-classes "'0'" -- show vgg16 --num-classes 0
expect_error show_num_classes_abc --num-classes abc -- show vgg16 --num-classes abc
expect_error show_num_classes_negative --num-classes -3 -- show vgg16 --num-classes -3
expect_error show_num_classes_trailing --num-classes 10x -- show vgg16 --num-classes 10x
expect_error show_freeze_unknown nosuchmodule -- show vgg16 --freeze nosuchmodule
expect_error show_freeze_unknown_after_good features.99 -- show vgg16 --freeze features --freeze features.99
expect_error show_no_arch architecture -- show
expect_error show_two_archs architecture -- show vgg16 vgg11
expect_error show_unknown_option --bogus -- show vgg16 --bogus

# ---- forward: arguments --------------------------------------------------------

expect_error forward_no_model --model -- forward --weights "$W_PLAIN" --input "$IO_PLAIN" --output "$OUT"
expect_error forward_no_weights --weights -- forward --model "$PLAIN" --input "$IO_PLAIN" --output "$OUT"
expect_error forward_no_input --input -- forward --model "$PLAIN" --weights "$W_PLAIN" --output "$OUT"
expect_error forward_no_output --output -- forward --model "$PLAIN" --weights "$W_PLAIN" --input "$IO_PLAIN"
expect_error forward_no_args --model -- forward
expect_error forward_extra_arg stray -- forward --model "$PLAIN" --num-classes 5 --weights "$W_PLAIN" \
    --input "$IO_PLAIN" --output "$OUT" stray
expect_error forward_num_classes_zero --num-classes -- forward --model "$PLAIN" --num-classes 0 \
    --weights "$W_PLAIN" --input "$IO_PLAIN" --output "$OUT"
expect_error forward_bad_seed --seed -- forward --model "$PLAIN" --num-classes 5 --seed -1 \
    --weights "$W_PLAIN" --input "$IO_PLAIN" --output "$OUT"
expect_error forward_unknown_arch nosuchnet -- forward --model nosuchnet --num-classes 5 \
    --weights "$W_PLAIN" --input "$IO_PLAIN" --output "$OUT"

# ---- forward: weights ----------------------------------------------------------

expect_error forward_missing_weights "$WORK/missing.safetensors" -- forward --model "$PLAIN" --num-classes 5 \
    --weights "$WORK/missing.safetensors" --input "$IO_PLAIN" --output "$OUT"

# a state dict of another model: BatchNorm weights into the plain VGG
expect_error forward_wrong_model_weights "$W_BN" -- forward --model "$PLAIN" --num-classes 5 \
    --weights "$W_BN" --input "$IO_PLAIN" --output "$OUT"
grep -qE 'size mismatch|Missing key' "$WORK/forward_wrong_model_weights.err" ||
    fail "forward_wrong_model_weights: no 'size mismatch' or 'Missing key' in: $(cat "$WORK/forward_wrong_model_weights.err")"
# the right model with another head width: a size mismatch of the head
# without --num-classes the model keeps its 1000-way head: loading is strict
expect_error forward_wrong_head_weights "$W_PLAIN" 'size mismatch' classifier.6.weight -- forward \
    --model "$PLAIN" --weights "$W_PLAIN" --input "$IO_PLAIN" --output "$OUT"

# with --num-classes the checkpoint's head is not loaded when it differs: one line says so
if ! "$GRAFT_BIN" forward --model "$PLAIN" --num-classes 10 --weights "$W_PLAIN" --input "$IO_PLAIN" \
    --output "$WORK/new_head.safetensors" 2>"$WORK/new_head.err" >/dev/null; then
    fail forward_new_head "exit status $? with a fresh 10-way head: $(cat "$WORK/new_head.err")"
elif ! grep -q 'classifier.6 was freshly initialised: the checkpoint.s head has 5 outputs, the model 10' \
    "$WORK/new_head.err"; then
    fail forward_new_head "no line about the fresh head: $(cat "$WORK/new_head.err")"
fi
rm -f "$WORK/new_head.safetensors"

# an io file (tensors input/output/...) is not a state dict
expect_error forward_weights_not_state_dict "$IO_PLAIN" -- forward --model "$PLAIN" --num-classes 5 \
    --weights "$IO_PLAIN" --input "$IO_PLAIN" --output "$OUT"

head -c 50000 "$W_PLAIN" >"$WORK/truncated.weights.safetensors"
expect_error forward_truncated_weights "$WORK/truncated.weights.safetensors" -- forward --model "$PLAIN" \
    --num-classes 5 --weights "$WORK/truncated.weights.safetensors" --input "$IO_PLAIN" --output "$OUT"

# hostile and broken PyTorch checkpoints: refused with one line, nothing executed
PTH=parity/fixtures/pth
expect_error forward_pickle_posix_system "$PTH/hostile_posix_system.pth" "posix.system" -- forward \
    --model "$PLAIN" --num-classes 5 --weights "$PTH/hostile_posix_system.pth" --input "$IO_PLAIN" --output "$OUT"
expect_error forward_pickle_builtins_eval "$PTH/hostile_builtins_eval.pth" "builtins.eval" -- forward \
    --model "$PLAIN" --num-classes 5 --weights "$PTH/hostile_builtins_eval.pth" --input "$IO_PLAIN" --output "$OUT"
for bad in zip_bomb expanded_view legacy_bad_count zip_short_storage truncated random whole_module; do
    expect_error "forward_pth_$bad" "$PTH/$bad.pth" -- forward --model "$PLAIN" --num-classes 5 \
        --weights "$PTH/$bad.pth" --input "$IO_PLAIN" --output "$OUT"
done
expect_error convert_hostile "$PTH/hostile_posix_system.pth" "posix.system" -- convert \
    "$PTH/hostile_posix_system.pth" "$OUT"

# ---- forward: input ------------------------------------------------------------

expect_error forward_missing_input "$WORK/missing.io.safetensors" -- forward --model "$PLAIN" --num-classes 5 \
    --weights "$W_PLAIN" --input "$WORK/missing.io.safetensors" --output "$OUT"

# a valid file without a tensor named "input" (the weights file)
expect_error forward_input_no_tensor "$W_PLAIN" "'input'" -- forward --model "$PLAIN" --num-classes 5 \
    --weights "$W_PLAIN" --input "$W_PLAIN" --output "$OUT"

# one channel where the first conv expects three
write_f32_safetensors "$WORK/gray.safetensors" input '[2,1,32,32]' $((2 * 1 * 32 * 32 * 4))
expect_error forward_wrong_channels "$WORK/gray.safetensors" 'features.0 (Conv2d)' -- forward \
    --model "$PLAIN" --num-classes 5 --weights "$W_PLAIN" --input "$WORK/gray.safetensors" --output "$OUT"

# a 3-d tensor instead of [N, C, H, W]
write_f32_safetensors "$WORK/chw.safetensors" input '[3,32,32]' $((3 * 32 * 32 * 4))
expect_error forward_input_3d "$WORK/chw.safetensors" -- forward --model "$PLAIN" --num-classes 5 \
    --weights "$W_PLAIN" --input "$WORK/chw.safetensors" --output "$OUT"

# an image too small for the model's five 2x2 max pools
write_f32_safetensors "$WORK/tiny.safetensors" input '[2,3,4,4]' $((2 * 3 * 4 * 4 * 4))
expect_error forward_input_too_small "$WORK/tiny.safetensors" MaxPool2d -- forward --model "$PLAIN" \
    --num-classes 5 --weights "$W_PLAIN" --input "$WORK/tiny.safetensors" --output "$OUT"

# random bytes (fixed seed, so failures reproduce)
LC_ALL=C awk 'BEGIN { srand(12345); for (i = 0; i < 4096; i++) printf "%c", int(rand() * 255) + 1 }' \
    >"$WORK/random.safetensors" 2>/dev/null ||
    head -c 4096 /dev/urandom >"$WORK/random.safetensors"
expect_error forward_random_input "$WORK/random.safetensors" -- forward --model "$PLAIN" --num-classes 5 \
    --weights "$W_PLAIN" --input "$WORK/random.safetensors" --output "$OUT"

# a real io file cut short: in the header, just after it, and in the data
header_len=$(od -An -t u4 -N 4 "$IO_PLAIN" | tr -d ' ')
for cut in 4 $((8 + header_len / 2)) $((8 + header_len)) $((8 + header_len + 1000)) 100000; do
    head -c "$cut" "$IO_PLAIN" >"$WORK/cut$cut.io.safetensors"
    expect_error "forward_truncated_input_$cut" "$WORK/cut$cut.io.safetensors" -- forward --model "$PLAIN" \
        --num-classes 5 --weights "$W_PLAIN" --input "$WORK/cut$cut.io.safetensors" --output "$OUT"
done

# an empty file
: >"$WORK/empty.safetensors"
expect_error forward_empty_input "$WORK/empty.safetensors" -- forward --model "$PLAIN" --num-classes 5 \
    --weights "$W_PLAIN" --input "$WORK/empty.safetensors" --output "$OUT"

# ---- forward: output -----------------------------------------------------------

# an output path in a directory that does not exist
expect_error forward_output_no_dir "$OUTDIR/nodir/out.safetensors" -- forward --model "$PLAIN" --num-classes 5 \
    --weights "$W_PLAIN" --input "$IO_PLAIN" --output "$OUTDIR/nodir/out.safetensors"

# an output path that is a directory: the temporary file must be removed again
mkdir "$WORK/isdir"
rc=0
"$GRAFT_BIN" forward --model "$PLAIN" --num-classes 5 --weights "$W_PLAIN" --input "$IO_PLAIN" \
    --output "$WORK/isdir" >"$WORK/isdir.out" 2>"$WORK/isdir.err" || rc=$?
((rc != 0)) || fail "forward_output_is_dir: exited with status 0"
[[ ! -s $WORK/isdir.out ]] || fail "forward_output_is_dir: wrote to stdout"
[[ $(wc -l <"$WORK/isdir.err") -eq 1 ]] || fail "forward_output_is_dir: stderr is not one line: $(cat "$WORK/isdir.err")"
grep -qF "$WORK/isdir" "$WORK/isdir.err" || fail "forward_output_is_dir: stderr does not name the path: $(cat "$WORK/isdir.err")"
[[ -z $(find "$WORK" -maxdepth 2 -name '*.tmp.*') ]] ||
    fail "forward_output_is_dir: temporary files left: $(find "$WORK" -maxdepth 2 -name '*.tmp.*')"
[[ -z $(ls -A "$WORK/isdir") ]] || fail "forward_output_is_dir: the directory is no longer empty"

# a failing run leaves an existing output file untouched
printf 'previous contents\n' >"$WORK/keep.safetensors"
rc=0
"$GRAFT_BIN" forward --model "$PLAIN" --num-classes 5 --weights "$W_BN" --input "$IO_PLAIN" \
    --output "$WORK/keep.safetensors" >/dev/null 2>&1 || rc=$?
((rc != 0)) || fail "forward_keeps_old_output: exited with status 0"
[[ $(cat "$WORK/keep.safetensors") == 'previous contents' ]] ||
    fail "forward_keeps_old_output: the existing output file was changed"

# ---- option values ---------------------------------------------------------------

# A bad --schedule is a usage error (status 2), named before any work starts.
expect_error train_bad_schedule --schedule bogus -- train --model "$PLAIN" --data "tensors:$IO_PLAIN" \
    --out "$OUTDIR/run" --schedule bogus
expect_error train_bad_schedule_field --schedule step_size -- train --model "$PLAIN" --data "tensors:$IO_PLAIN" \
    --out "$OUTDIR/run" --schedule step:step_size=0
expect_error demo_bad_schedule --schedule cosine,bogus -- demo --out "$OUTDIR/demo" --schedule cosine,bogus
for args in "train --model $PLAIN --data tensors:$IO_PLAIN --out $OUTDIR/run --schedule bogus" \
    "demo --out $OUTDIR/demo --schedule cosine,bogus"; do
    rc=0
    # shellcheck disable=SC2086  # the words of args are the arguments
    "$GRAFT_BIN" $args >/dev/null 2>&1 || rc=$?
    ((rc == 2)) || fail "bad_schedule: 'graft $args' exited with status $rc, not 2 (usage)"
done

# ---- the command itself --------------------------------------------------------

# An unknown command is a usage error: its first stderr line names it (the usage follows).
rc=0
"$GRAFT_BIN" frobnicate >"$WORK/cmd.out" 2>"$WORK/cmd.err" || rc=$?
((rc != 0)) || fail "unknown_command: exited with status 0"
[[ ! -s $WORK/cmd.out ]] || fail "unknown_command: wrote to stdout"
head -n 1 "$WORK/cmd.err" | grep -qF frobnicate || fail "unknown_command: first stderr line does not name it: $(head -n 1 "$WORK/cmd.err")"
rc=0
"$GRAFT_BIN" >"$WORK/none.out" 2>"$WORK/none.err" || rc=$?
((rc != 0)) || fail "no_command: exited with status 0"
[[ ! -s $WORK/none.out ]] || fail "no_command: wrote to stdout"
grep -q usage "$WORK/none.err" || fail "no_command: no usage on stderr"

# The control: the same arguments as above, done right, succeed and write the output.
rc=0
"$GRAFT_BIN" forward --model "$PLAIN" --num-classes 5 --weights "$W_PLAIN" --input "$IO_PLAIN" \
    --output "$OUT" >"$WORK/ok.out" 2>"$WORK/ok.err" || rc=$?
((rc == 0)) || fail "control: a valid forward failed with status $rc: $(cat "$WORK/ok.err")"
[[ -s $OUT ]] || fail "control: a valid forward wrote no output file"
[[ ! -s $WORK/ok.err && ! -s $WORK/ok.out ]] || fail "control: a valid forward printed something"
[[ -z $(find "$OUTDIR" -name '*.tmp.*') ]] || fail "control: temporary files left in $OUTDIR"

if ((failures)); then
    echo "test_errors: $failures failure(s)" >&2
    exit 1
fi
echo "test_errors: all checks passed"
