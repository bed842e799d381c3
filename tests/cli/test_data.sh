#!/usr/bin/env bash
# test_data.sh — contract of `graft data` and `graft fetch cifar10`: the summary of every
# dataset kind, --dump files that read back as a dataset, and bad input (truncated
# batches, wrong magic numbers, labels out of range, empty folders, corrupt images): a
# non-zero exit with one line on stderr naming the file, or for folders a warning per
# unreadable file and a count.  No network: fetch runs offline or finds data present.
# Runs from tests/ with GRAFT_BIN (the graft binary) and GRAFT_TMP (scratch dir).
set -euo pipefail

: "${GRAFT_BIN:?GRAFT_BIN must name the graft binary}"
: "${GRAFT_TMP:?GRAFT_TMP must name a scratch directory}"
DS=parity/fixtures/datasets
[[ -d $DS/cifar10 ]] || { echo "FAIL: fixtures missing in $DS (run from tests/)" >&2; exit 1; }

WORK=$(mktemp -d "$GRAFT_TMP/test_data.XXXXXX")
trap '[[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"' EXIT
export GRAFT_DATA=$WORK/empty-data-root GRAFT_OFFLINE=1
unset GRAFT_DATA_URL_BASE

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# expect_ok NAME NEEDLE... -- ARGS...: status 0 and every NEEDLE (fixed strings) on stdout.
expect_ok() {
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
    if ((rc != 0)); then
        fail "$name: 'graft $*' exited with $rc: $(head -c 600 "$WORK/$name.err")"
        return
    fi
    local needle
    for needle in "${needles[@]}"; do
        grep -qF -- "$needle" "$WORK/$name.out" ||
            fail "$name: stdout lacks '$needle': $(head -c 900 "$WORK/$name.out")"
    done
}

# expect_error NAME NEEDLE... -- ARGS...: non-zero status (not a signal), nothing on
# stdout, exactly one line on stderr holding every NEEDLE.
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
    ((rc != 0)) || fail "$name: 'graft $*' exited with status 0"
    ((rc < 128)) || fail "$name: 'graft $*' died from a signal (status $rc; stderr: $err)"
    [[ ! -s $WORK/$name.out ]] || fail "$name: wrote to stdout: $(head -c 300 "$WORK/$name.out")"
    local lines
    lines=$(wc -l <"$WORK/$name.err")
    ((lines == 1)) || fail "$name: expected one line on stderr, got $lines: $err"
    local needle
    for needle in "${needles[@]}"; do
        grep -qF -- "$needle" "$WORK/$name.err" || fail "$name: stderr does not mention '$needle': $err"
    done
}

# ---- summaries -----------------------------------------------------------------------

expect_ok cifar10_py 'data: cifar10 (python version)' 'train: 15 images, test: 4 images' 'classes: 10' \
    'automobile' 'input: 3x32x32 (after transforms)' -- data "cifar10:$DS/cifar10"
grep -qE '^ +6  frog +4 +0$' "$WORK/cifar10_py.out" ||
    fail "cifar10_py: no class row '6 frog 4 0': $(cat "$WORK/cifar10_py.out")"
expect_ok cifar100_py 'train: 5 images, test: 3 images' 'classes: 100' 'worm' -- data --data "cifar100:$DS/cifar100"
expect_ok folder 'train: 10 images, test: 4 images' 'Zebra' 'input: 3x16x16' -- data "folder:$DS/folder" \
    --transform resize=20,centercrop=16
expect_ok folder_sizes_differ 'input: not one size' -- data "folder:$DS/folder"
expect_ok subsets 'classes: 2' 'train: 2 images, test: 2 images' 'truck' -- data "cifar10:$DS/cifar10" \
    --classes truck,0 --per-class 1 --seed 3
if [[ -d /usr/share/datasets/fashion-mnist ]]; then
    expect_ok fashion 'train: 60000 images, test: 10000 images' 'Ankle boot' 'input: 1x28x28' -- data fashion-mnist
fi

# ---- --dump, read back as a dataset --------------------------------------------------

expect_ok dump 'wrote 3 train samples' -- data "cifar10:$DS/cifar10" --transform hflip,normalize=0.5/0.5 \
    --seed 4 --dump 3 "$WORK/dump.safetensors"
expect_ok dump_reads_back 'train: 3 images' 'input: 3x32x32' 'automobile' -- data "tensors:$WORK/dump.safetensors"
expect_ok dump_is_seeded 'wrote 3' -- data "cifar10:$DS/cifar10" --transform hflip,normalize=0.5/0.5 \
    --seed 4 --dump 3 "$WORK/dump2.safetensors"
cmp -s "$WORK/dump.safetensors" "$WORK/dump2.safetensors" || fail "dump_is_seeded: two dumps with --seed 4 differ"
expect_error dump_float_with_transform 'as they are' -- data "tensors:$WORK/dump.safetensors" \
    --transform hflip --dump 1 "$WORK/never.safetensors"
[[ ! -e $WORK/never.safetensors ]] || fail "dump_float_with_transform: wrote a file"

# ---- arguments ---------------------------------------------------------------------

expect_error no_spec 'SPEC' -- data
expect_error unknown_dataset "unknown dataset 'imagenet'" -- data imagenet
expect_error cifar_not_there "graft fetch cifar10" "$GRAFT_DATA" -- data cifar10
expect_error bad_transform '--transform' 'spin' -- data "cifar10:$DS/cifar10" --transform spin
expect_error transform_fits_no_image 'randomcrop=40' 'larger than' -- data "cifar10:$DS/cifar10" --transform randomcrop=40
expect_error bad_per_class '--per-class' -- data "cifar10:$DS/cifar10" --per-class 0
expect_error too_few_per_class 'fewer than --per-class 5' -- data "cifar10:$DS/cifar10" --per-class 5
expect_error bad_classes "no class named 'zebra'" -- data "cifar10:$DS/cifar10" --classes zebra
expect_error bad_split '--split' -- data "cifar10:$DS/cifar10" --split valid
expect_error dump_missing_file '--dump' -- data "cifar10:$DS/cifar10" --dump 3

# ---- bad files ---------------------------------------------------------------------

# CIFAR python: a truncated batch
cp -r "$DS/cifar10" "$WORK/c10"
head -c 5000 "$DS/cifar10/cifar-10-batches-py/data_batch_3" >"$WORK/c10/cifar-10-batches-py/data_batch_3"
expect_error cifar_py_truncated "c10/cifar-10-batches-py/data_batch_3: " -- data "cifar10:$WORK/c10"

# CIFAR binary: a truncated batch, a label out of range
mkdir -p "$WORK/c10bin/cifar-10-batches-bin"
for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
    head -c $((2 * 3073)) /dev/zero >"$WORK/c10bin/cifar-10-batches-bin/$f.bin"
done
printf 'a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n' >"$WORK/c10bin/cifar-10-batches-bin/batches.meta.txt"
expect_ok cifar_bin_good 'binary version' 'train: 10 images, test: 2 images' -- data "cifar10:$WORK/c10bin"
head -c 3000 /dev/zero >"$WORK/c10bin/cifar-10-batches-bin/data_batch_2.bin"
expect_error cifar_bin_truncated "data_batch_2.bin: " 'truncated' -- data "cifar10:$WORK/c10bin"
head -c $((2 * 3073)) /dev/zero >"$WORK/c10bin/cifar-10-batches-bin/data_batch_2.bin"
printf '\x0c' | dd of="$WORK/c10bin/cifar-10-batches-bin/test_batch.bin" bs=1 seek=3073 conv=notrunc status=none
expect_error cifar_bin_label "test_batch.bin: " 'label 12' -- data "cifar10:$WORK/c10bin"

# IDX: a wrong magic number
mkdir -p "$WORK/mnist"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    printf '\x00\x00\x08\x07\x00\x00\x00\x01' >"$WORK/mnist/$f"
done
expect_error idx_magic "train-images-idx3-ubyte: " 'magic' -- data "mnist:$WORK/mnist"

# folders: empty, and unreadable files (skipped and counted, or --strict)
mkdir -p "$WORK/empty"
expect_error folder_empty 'no class folders' "$WORK/empty" -- data "folder:$WORK/empty"
mkdir -p "$WORK/imgs/a" "$WORK/imgs/b"
cp "$DS/folder/train/cat/1.png" "$WORK/imgs/a/1.png"
cp "$DS/folder/train/cat/1.png" "$WORK/imgs/b/1.png"
head -c 400 "$DS/folder/train/dog/d.jpeg" >"$WORK/imgs/b/2.jpg" # passes the header check
printf 'garbage' >"$WORK/imgs/b/3.jpg"
expect_ok folder_skip 'train: 3 images' 'skipped: 1 unreadable files' -- data "folder:$WORK/imgs"
grep -qF "warning: $WORK/imgs/b/3.jpg: not a PNG, JPEG or BMP file; skipped" "$WORK/folder_skip.err" ||
    fail "folder_skip: no warning naming 3.jpg: $(cat "$WORK/folder_skip.err")"
expect_error folder_strict "$WORK/imgs/b/3.jpg" -- data "folder:$WORK/imgs" --strict
rm "$WORK/imgs/b/3.jpg"
expect_ok folder_corrupt_jpeg 'wrote 3 train samples' 'skipped: 1 unreadable files' -- data "folder:$WORK/imgs" \
    --transform resize=8,centercrop=8 --dump 3 "$WORK/imgs.safetensors"
grep -qF "$WORK/imgs/b/2.jpg" "$WORK/folder_corrupt_jpeg.err" ||
    fail "folder_corrupt_jpeg: no warning naming 2.jpg: $(cat "$WORK/folder_corrupt_jpeg.err")"
expect_error folder_corrupt_jpeg_strict "$WORK/imgs/b/2.jpg" -- data "folder:$WORK/imgs" --strict \
    --transform resize=8,centercrop=8 --dump 3 "$WORK/never.safetensors"

# ---- fetch (no network) --------------------------------------------------------------

expect_error fetch_offline 'cifar-10-binary.tar.gz' "$WORK/dl" -- fetch cifar10 --root "$WORK/dl"
expect_error fetch_root_for_model '--root' -- fetch vgg16 --root "$WORK/dl"
expect_ok fetch_present "$WORK/c10/cifar-10-batches-py" -- fetch cifar10 --root "$WORK/c10"

if ((failures)); then
    echo "$failures failure(s)" >&2
    exit 1
fi
echo "test_data.sh: all passed"
