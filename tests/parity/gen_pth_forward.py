#!/usr/bin/env python3
"""PyTorch's outputs for the committed .pth fixtures, so graft forward can be checked on
each layout end to end.

Run from the repository root (after gen_pth_fixtures.py, whose files it reads):

    /usr/bin/python3 tests/parity/gen_pth_forward.py

For every VGG-shaped checkpoint in tests/parity/fixtures/pth/ it builds the same model
with torchvision's own classes (graft spec "vgg:cfg=8-M-16-M,bn,hidden=12,pool=1",
10 classes), loads the checkpoint with torch.load + load_state_dict (strict), runs one
eval-mode forward on a fixed input and writes pth/forward.io.safetensors:
  input              [2, 3, 12, 12]
  output.<file stem> [2, 10] for each checkpoint
"""
import json
import os
import struct

import torch
import torch.nn as nn
from torchvision.models.vgg import VGG, make_layers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pth")
FILES = ["vgg_zip", "vgg_legacy", "vgg_zip_p4", "vgg_legacy_p4", "vgg_fp16", "vgg_bf16", "vgg_f64",
         "nested_state_dict", "nested_model", "dataparallel", "weird_prefix"]
SPEC = "vgg:cfg=8-M-16-M,bn,hidden=12,pool=1"


def model():
    m = VGG(make_layers([8, "M", 16, "M"], batch_norm=True), num_classes=10, init_weights=False)
    m.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    m.classifier = nn.Sequential(nn.Linear(16, 12), nn.ReLU(True), nn.Dropout(),
                                 nn.Linear(12, 12), nn.ReLU(True), nn.Dropout(),
                                 nn.Linear(12, 10))
    return m.eval()


def state_dict_of(obj):
    if "state_dict" in obj:
        obj = obj["state_dict"]
    elif "model" in obj:
        obj = obj["model"]
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in obj.items()}


def write_safetensors(path, tensors, meta):
    header, blobs, offset = {"__metadata__": meta}, [], 0
    for name, t in tensors.items():
        data = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    torch.manual_seed(11)
    x = torch.randn(2, 3, 12, 12)
    out = {"input": x}
    for stem in FILES:
        m = model()
        m.load_state_dict(state_dict_of(torch.load(os.path.join(ROOT, stem + ".pth"))), strict=True)
        with torch.no_grad():
            out["output." + stem] = m(x)
    write_safetensors(os.path.join(ROOT, "forward.io.safetensors"), out,
                      {"arch": SPEC, "num_classes": "10", "torch": torch.__version__})
    print("wrote", len(FILES), "outputs")


if __name__ == "__main__":
    main()
