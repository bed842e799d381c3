#!/usr/bin/python3
"""Generate PyTorch/torchvision reference fixtures for graft's ResNet support.

Run from the repository root:

    /usr/bin/python3 tests/parity/gen_resnet_fixtures.py
    /usr/bin/python3 tests/parity/gen_resnet_fixtures.py --full DIR   # also the full-size check

Outputs (committed, so CI never needs torch):
  print/resnetNAME.txt        byte-exact print(model) of resnet18/34/50/101/152, resnet50
                              with a 10-class fc, and the two small custom models
  resnet/params.tsv           NAME<TAB>total params<TAB>state_dict keys (all printed models)
  resnet/state_keys_NAME.tsv  key<TAB>dtype<TAB>shape in state_dict order (resnet18,
                              resnet50, the custom models)
  resnet/MODEL.weights.safetensors  initial state dict (num_classes 5) of a small ResNet
                              built with torchvision's own ResNet, BasicBlock, Bottleneck and
                              _make_layer (only the base width 64 is changed, see SmallResNet)
  resnet/MODEL_SIZE_MODE.io.safetensors  input, labels, output, loss, grad_input, every
                              grad.<param> and (train mode) after.<buffer>
  resnet/data.safetensors     a tensor dataset (images [24, 3, 24, 24], labels [24])
  resnet/train_frozen.safetensors  state dict after one epoch (3 steps of 8) of SGD lr 0.01,
                              momentum 0.9, weight decay 5e-4, everything but fc frozen
                              (frozen modules in eval mode: graft's frozen BatchNorm semantics)
  resnet/train_all.safetensors     the same with nothing frozen, SGD lr 0.01 momentum 0.9
                              (BatchNorm in train mode: batch statistics, running ones updated)
  resnet/MANIFEST.tsv         path<TAB>size<TAB>sha256 of every file above (paths relative
                              to tests/parity/fixtures)
Spec strings are in each file's __metadata__.arch.

--full DIR writes (not committed) DIR/resnet50.pth (torch.save of a torchvision resnet50
state dict with random weights and BatchNorm statistics), DIR/resnet50.in.safetensors (input
[2, 3, 224, 224]) and DIR/resnet50.out.safetensors (PyTorch's eval output), for
    graft forward --model resnet50 --weights DIR/resnet50.pth --input DIR/resnet50.in.safetensors --output OUT
The script is deterministic (fixed seeds) and re-reads every file it writes.
"""

import hashlib
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torchvision.models import resnet as tvresnet

ROOT = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(ROOT, "fixtures")
OUT = os.path.join(FIX, "resnet")
MAX_TOTAL = 4 * 1024 * 1024

N, K = 4, 5

# name -> (block, layers, width); the spec string graft takes is spec(name)
CUSTOM = {
    "basic": ("basic", [1, 2, 1, 1], 8),
    "bottleneck": ("bottleneck", [1, 2, 1, 1], 4),
}
# parity runs: (model, input H=W)
PARITY = [("basic", 40), ("bottleneck", 36)]
TV_NAMES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
TRAIN_MODEL = "bottleneck"
TRAIN_N, TRAIN_HW, TRAIN_BATCH = 24, 24, 8

written = []


def spec(name):
    block, layers, width = CUSTOM[name]
    return "resnet:block=%s,layers=%s,width=%d" % (block, "-".join(str(v) for v in layers), width)


# --------------------------------------------------------------------------
# safetensors (tiny writer/reader, no dependency on the safetensors package)

_DT = {torch.float32: ("F32", "<f4"), torch.int64: ("I64", "<i8")}
_NP = {"F32": ("<f4", 4), "I64": ("<i8", 8)}


def st_write(path, tensors, metadata=None, record=True):
    """tensors: list of (name, torch.Tensor) in data order."""
    header, blobs, off = {}, [], 0
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        code, npdt = _DT[t.dtype]
        data = t.numpy().astype(npdt, copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))
    if record:
        written.append(os.path.relpath(path, FIX))
    EXPECT[path] = (tensors, metadata or {})


def st_read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    data = raw[8 + hlen:]
    out = {}
    for name, info in header.items():
        npdt, size = _NP[info["dtype"]]
        b, e = info["data_offsets"]
        assert e - b == int(np.prod(info["shape"], dtype=np.int64)) * size, name
        out[name] = np.frombuffer(data[b:e], dtype=npdt).reshape(info["shape"])
    return out, meta, list(header.keys())


EXPECT = {}


def write_text(path, text):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    written.append(os.path.relpath(path, FIX))


# --------------------------------------------------------------------------
# models

class ResNet(tvresnet.ResNet):
    """torchvision's ResNet with the base width 64 replaced by `width`: the stem has
    `width` channels and the stages width, 2·width, 4·width, 8·width planes.  The blocks
    and _make_layer are torchvision's own; the class keeps the name ResNet so that it
    prints as torchvision's does."""

    def __init__(self, block, layers, width, num_classes):
        self._width = width
        super().__init__(block, layers, num_classes=num_classes)
        # __init__ built the stem and fc for width 64: rebuild them (same names, same order)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # layer1: the stem's output has `width` channels
            self.inplanes = self._width
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)


def build_custom(name, seed, num_classes=K):
    block, layers, width = CUSTOM[name]
    torch.manual_seed(seed)
    cls = tvresnet.BasicBlock if block == "basic" else tvresnet.Bottleneck
    model = ResNet(cls, layers, width, num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def build_tv(name):
    torch.manual_seed(0)
    if name == "resnet50_classes10":
        m = torchvision.models.resnet50(weights=None)
        m.fc = nn.Linear(2048, 10)
        return m
    return getattr(torchvision.models, name)(weights=None)


def dtype_name(t):
    return {torch.float32: "float32", torch.int64: "int64"}[t.dtype]


def write_state_keys(name, model):
    lines = ["%s\t%s\t[%s]\n" % (k, dtype_name(v), ", ".join(str(d) for d in v.shape))
             for k, v in model.state_dict().items()]
    write_text(os.path.join(OUT, "state_keys_%s.tsv" % name), "".join(lines))


# --------------------------------------------------------------------------
# fixtures

def gen_parity(name, seed):
    model = build_custom(name, seed)
    init = [(k, v.detach().clone()) for k, v in model.state_dict().items()]
    meta = {"arch": spec(name), "num_classes": str(K), "torch": torch.__version__,
            "torchvision": torchvision.__version__}
    st_write(os.path.join(OUT, "%s.weights.safetensors" % name), init, meta)
    for size_name, H in PARITY:
        if size_name != name:
            continue
        for mi, mode in enumerate(("eval", "train")):
            model = build_custom(name, seed)  # identical initial weights per mode
            model.train(mode == "train")
            torch.manual_seed(seed * 100 + 17 + mi)
            x = torch.randn(N, 3, H, H, requires_grad=True)
            labels = torch.randint(0, K, (N,), dtype=torch.int64)
            out = model(x)
            loss = nn.CrossEntropyLoss()(out, labels)
            loss.backward()
            io = [("input", x.detach()), ("labels", labels), ("output", out.detach()),
                  ("loss", loss.detach().reshape(1)), ("grad_input", x.grad)]
            io += [("grad." + k, p.grad) for k, p in model.named_parameters()]
            if mode == "train":
                io += [("after." + k, b.detach()) for k, b in model.named_buffers()]
            st_write(os.path.join(OUT, "%s_%d_%s.io.safetensors" % (name, H, mode)), io,
                     dict(meta, mode=mode))


def train_run(model, x, y, frozen_trunk, make_opt):
    for k, p in model.named_parameters():
        p.requires_grad = k.startswith("fc.") or not frozen_trunk
    opt = make_opt([p for p in model.parameters() if p.requires_grad])
    model.train()
    if frozen_trunk:  # graft's frozen BatchNorm: running statistics, never updated
        for k, m in model.named_children():
            if k != "fc":
                m.eval()
    loss_fn = nn.CrossEntropyLoss()
    for i in range(0, len(x), TRAIN_BATCH):
        opt.zero_grad()
        loss_fn(model(x[i:i + TRAIN_BATCH]), y[i:i + TRAIN_BATCH]).backward()
        opt.step()
    return [(k, v.detach().clone()) for k, v in model.state_dict().items()]


def gen_train(seed):
    torch.manual_seed(7)
    x = torch.randn(TRAIN_N, 3, TRAIN_HW, TRAIN_HW)
    y = torch.arange(TRAIN_N, dtype=torch.int64) % K
    y = y[torch.randperm(TRAIN_N)]
    st_write(os.path.join(OUT, "data.safetensors"), [("images", x), ("labels", y)])
    meta = {"arch": spec(TRAIN_MODEL), "num_classes": str(K)}
    runs = {
        "train_frozen": (True, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4)),
        "train_all": (False, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)),
    }
    for name, (frozen, make_opt) in runs.items():
        model = build_custom(TRAIN_MODEL, seed)
        st_write(os.path.join(OUT, name + ".safetensors"), train_run(model, x, y, frozen, make_opt), meta)


def gen_full(d):
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(50)
    model = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    torch.save(model.state_dict(), os.path.join(d, "resnet50.pth"))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = model(x)
    st_write(os.path.join(d, "resnet50.in.safetensors"), [("input", x)], record=False)
    st_write(os.path.join(d, "resnet50.out.safetensors"), [("output", out)], record=False)
    print("full-size resnet50 check written to", d)


# --------------------------------------------------------------------------

def self_check():
    for path, (tensors, meta) in EXPECT.items():
        arrs, m2, order = st_read(path)
        assert m2 == {str(k): str(v) for k, v in meta.items()}, path
        assert order == [n for n, _ in tensors], path
        for n, t in tensors:
            ref = t.detach().cpu().numpy()
            assert arrs[n].dtype == ref.dtype and np.array_equal(arrs[n], ref), (path, n)
            if ref.dtype == np.float32:
                assert np.all(np.isfinite(ref)), (path, n)
            if n.startswith("grad."):
                assert np.any(ref != 0), (path, n)


def write_manifest():
    rows, total = [], 0
    for rel in sorted(set(written)):
        with open(os.path.join(FIX, rel), "rb") as f:
            data = f.read()
        total += len(data)
        rows.append("%s\t%d\t%s\n" % (rel, len(data), hashlib.sha256(data).hexdigest()))
    mpath = os.path.join(OUT, "MANIFEST.tsv")
    with open(mpath, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(rows))
    return len(rows) + 1, total + os.path.getsize(mpath)


def main(argv):
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    os.makedirs(OUT, exist_ok=True)
    for fn in os.listdir(OUT):  # drop stale outputs (only ours: resnet/ and print/resnet*)
        os.remove(os.path.join(OUT, fn))
    pdir = os.path.join(FIX, "print")
    os.makedirs(pdir, exist_ok=True)
    for fn in os.listdir(pdir):
        if fn.startswith("resnet"):
            os.remove(os.path.join(pdir, fn))

    rows = []
    for name in TV_NAMES + ["resnet50_classes10"]:
        m = build_tv(name)
        write_text(os.path.join(pdir, name + ".txt"), repr(m) + "\n")
        rows.append((name, sum(p.numel() for p in m.parameters()), len(m.state_dict())))
        if name in ("resnet18", "resnet50"):
            write_state_keys(name, m)
    for i, name in enumerate(CUSTOM):
        m = build_custom(name, 2000 + i)
        write_text(os.path.join(pdir, "resnet_%s.txt" % name), repr(m) + "\n")
        rows.append(("resnet_" + name, sum(p.numel() for p in m.parameters()), len(m.state_dict())))
        write_state_keys(name, m)
        gen_parity(name, 2000 + i)
    write_text(os.path.join(OUT, "params.tsv"), "".join("%s\t%d\t%d\n" % r for r in rows))
    gen_train(2000 + list(CUSTOM).index(TRAIN_MODEL))

    if len(argv) == 2 and argv[0] == "--full":
        gen_full(argv[1])
    elif argv:
        sys.exit("usage: gen_resnet_fixtures.py [--full DIR]")
    self_check()
    nfiles, total = write_manifest()
    assert total < MAX_TOTAL, "resnet fixtures exceed %d bytes: %d" % (MAX_TOTAL, total)
    print("self-check OK; files: %d (incl. MANIFEST.tsv), total bytes: %d" % (nfiles, total))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
