#!/usr/bin/env python3
"""PyTorch's result of a few training steps of the recipe, for graft train's parity test.

Run from the repository root:

    /usr/bin/python3 tests/parity/gen_train_fixtures.py

A small VGG built with torchvision's classes (graft spec below, 5 classes) starts from
fixed weights (head included) and trains on a fixed float32 tensor dataset, no shuffle,
dropout 0, batch 8: 40 images, so one epoch is 5 optimiser steps.  Writes to
tests/parity/fixtures/train/:

  data.safetensors        images [40, 3, 16, 16] float32, labels [40] int64
  images_u8.safetensors   uint8 images [40, 16, 16, 3] and the same labels (for transforms)
  init.safetensors        the initial state dict
  NAME.safetensors        the state dict after one epoch, for each run NAME:
    sgd            features frozen; SGD lr 0.01, momentum 0.9, weight_decay 5e-4
    sgd_nesterov   the same with nesterov=True
    adamw          features frozen; AdamW lr 1e-3, weight_decay 0.01
    bn_all         the batch-norm variant (init_bn.safetensors), nothing frozen, SGD
                   lr 0.01 momentum 0.9, one step (batch 8, max one step) in train mode:
                   BatchNorm uses batch statistics and updates its running statistics
Frozen layers are put in eval mode, as graft's frozen BatchNorm semantics require (no
BatchNorm is frozen in these runs, so PyTorch's own behaviour is the same).
"""
import json
import os
import struct

import torch
import torch.nn as nn
from torchvision.models.vgg import VGG, make_layers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "train")
SPEC = "vgg:cfg=8-M-16-M,hidden=32,pool=2,dropout=0.5"
SPEC_BN = "vgg:cfg=8-M-16-M,bn,hidden=32,pool=2,dropout=0.5"


def model(bn):
    m = VGG(make_layers([8, "M", 16, "M"], batch_norm=bn), num_classes=5, init_weights=True, dropout=0.0)
    m.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    m.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(True), nn.Dropout(0.0),
                                 nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(0.0), nn.Linear(32, 5))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.normal_(0, 0.1)
                mod.bias.normal_(0, 0.1)
            if isinstance(mod, nn.Conv2d):  # non-zero, so a bias whose gradient is 0 stays comparable
                mod.bias.normal_(0, 0.1)
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def write_safetensors(path, tensors, meta=None):
    header, blobs, offset = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for name, t in tensors.items():
        t = t.detach().contiguous()
        dtype = {torch.float32: "F32", torch.int64: "I64", torch.uint8: "U8"}[t.dtype]
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def run(m, x, y, frozen, make_opt, max_steps=None):
    for name, p in m.named_parameters():
        p.requires_grad = not any(name.startswith(f + ".") for f in frozen)
    opt = make_opt([p for p in m.parameters() if p.requires_grad])
    m.train()
    for f in frozen:
        getattr(m, f).eval()
    loss_fn = nn.CrossEntropyLoss()
    for step, i in enumerate(range(0, len(x), 8)):
        if max_steps is not None and step >= max_steps:
            break
        opt.zero_grad()
        loss = loss_fn(m(x[i:i + 8]), y[i:i + 8])
        loss.backward()
        opt.step()
    return m.state_dict()


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(40, 3, 16, 16)
    y = torch.randint(0, 5, (40,))
    write_safetensors(os.path.join(OUT, "data.safetensors"), {"images": x, "labels": y})
    # the same labels with uint8 images [N, H, W, C], which go through transforms (flips)
    u8 = torch.randint(0, 256, (40, 16, 16, 3), dtype=torch.uint8)
    write_safetensors(os.path.join(OUT, "images_u8.safetensors"), {"images": u8, "labels": y})
    base = model(False)
    init = {k: v.clone() for k, v in base.state_dict().items()}
    write_safetensors(os.path.join(OUT, "init.safetensors"), init, {"arch": SPEC})
    runs = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4),
        "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True),
        "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
    }
    for name, make_opt in runs.items():
        m = model(False)
        m.load_state_dict(init)
        write_safetensors(os.path.join(OUT, name + ".safetensors"), run(m, x, y, ["features"], make_opt),
                          {"arch": SPEC})
    bn = model(True)
    init_bn = {k: v.clone() for k, v in bn.state_dict().items()}
    write_safetensors(os.path.join(OUT, "init_bn.safetensors"), init_bn, {"arch": SPEC_BN})
    m = model(True)
    m.load_state_dict(init_bn)
    sd = run(m, x, y, [], lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), max_steps=1)
    write_safetensors(os.path.join(OUT, "bn_all.safetensors"), sd, {"arch": SPEC_BN})
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
