#!/usr/bin/env bash
# Reproduces models/fashion-source.safetensors, the source model of `graft demo`:
# the custom VGG below trained from scratch by graft itself on the Fashion-MNIST
# classes Trouser, Sandal, Sneaker, Bag, Ankle boot (labels 1, 5, 7, 8, 9; all
# 30,000 of their training images), from Debian's dataset-fashion-mnist package.
#
#   bash scripts/train_source_model.sh [RUN_DIR]
#
# The recipe is fixed in advance (Adam 1e-3 with a cosine schedule, batch 64, small
# random crops and flips, 3 epochs, seed 0); nothing is chosen by test accuracy.  The
# file kept is the last epoch's checkpoint (last.safetensors), never best.safetensors,
# which is picked by test accuracy.  The test accuracy on the 5,000 test images of the
# source classes is printed at the end and quoted in the README.
set -euo pipefail
source "$(dirname "$0")/env.sh"
GRAFT="${GRAFT_BIN:-$GRAFT_ROOT/build/graft}"
RUN="${1:-$GRAFT_ROOT/runs/fashion-source}"
SOURCE_ARCH="vgg:cfg=32-32-M-64-64-M-128-M,bn,hidden=256,pool=3,dropout=0.5,in=1"

if [ ! -x "$GRAFT" ]; then
  bash "$GRAFT_ROOT/scripts/setup.sh"
  cmake -S "$GRAFT_ROOT" -B "$GRAFT_ROOT/build" -DCMAKE_BUILD_TYPE=Release -DGRAFT_TESTS=OFF >/dev/null
  cmake --build "$GRAFT_ROOT/build" -j "$GRAFT_JOBS" >/dev/null
fi

rm -rf "$RUN"
"$GRAFT" train --model "$SOURCE_ARCH" --data fashion-mnist --classes 1,5,7,8,9 \
  --transform hflip,randomcrop=28:2 --epochs 3 --batch-size 64 \
  --optimizer adam --lr 0.001 --schedule cosine:t_max=3 --seed 0 --out "$RUN"
mkdir -p "$GRAFT_ROOT/models"
cp "$RUN/last.safetensors" "$GRAFT_ROOT/models/fashion-source.safetensors"
echo "wrote models/fashion-source.safetensors ($(stat -c %s "$GRAFT_ROOT/models/fashion-source.safetensors") bytes)"
