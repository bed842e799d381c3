#!/usr/bin/python3
"""Generate PyTorch/torchvision reference fixtures for graft's VGG support.

Run from the repository root:

    /usr/bin/python3 tests/parity/gen_vgg_fixtures.py

Outputs (all under tests/parity/fixtures/, committed so CI never needs torch):
  print/NAME.txt            byte-exact repr(model) + "\n" (what print(model) writes)
  print/params.tsv          NAME<TAB>total_params<TAB>state_dict key count
  state_keys/NAME.tsv       key<TAB>dtype<TAB>shape, in state_dict order
  vgg/NAME_MODE.weights.safetensors, vgg/NAME_MODE.io.safetensors
  MANIFEST.tsv              path<TAB>size<TAB>sha256 for every file above
The script is deterministic (fixed seeds) and self-checks every file it writes.
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
from torchvision.models import vgg as tvvgg

ROOT = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(ROOT, "fixtures")
MAX_TOTAL = 5 * 1024 * 1024

N, K, HID = 4, 5, 32
DROPOUT = 0.5

# name -> (cfg string, batch_norm, pool S, input H=W)
CUSTOM = {
    "plain32": ("8-M-16-M-16-16-M-32-M-32-M", False, 2, 32),
    "plain40": ("8-M-16-M-16-16-M-32-M-32-M", False, 2, 40),
    "bn32": ("8-M-16-16-M-32-M", True, 3, 32),
    "bn40": ("8-M-16-16-M-32-M", True, 3, 40),
}
TV_NAMES = ["vgg11", "vgg13", "vgg16", "vgg19",
            "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]

written = []  # relative paths of every file written


# --------------------------------------------------------------------------
# safetensors (tiny writer/reader, no dependency on the safetensors package)

_DT = {torch.float32: ("F32", "<f4", 4), torch.int64: ("I64", "<i8", 8)}
_NP = {"F32": ("<f4", 4), "I64": ("<i8", 8)}


def st_write(path, tensors, metadata=None):
    """tensors: list of (name, torch.Tensor) in the desired data order."""
    header = {}
    blobs = []
    off = 0
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        if t.dtype not in _DT:
            raise TypeError("%s: unsupported dtype %s" % (name, t.dtype))
        code, npdt, _ = _DT[t.dtype]
        data = t.numpy().astype(npdt, copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    _record(path)


def st_read(path):
    """Returns (dict name -> np.ndarray, metadata dict, ordered names)."""
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    assert hlen % 8 == 0, "header length not padded to 8"
    header = json.loads(raw[8:8 + hlen].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    data = raw[8 + hlen:]
    out = {}
    spans = []
    for name, info in header.items():
        npdt, size = _NP[info["dtype"]]
        b, e = info["data_offsets"]
        count = int(np.prod(info["shape"], dtype=np.int64))
        assert e - b == count * size, name
        out[name] = np.frombuffer(data[b:e], dtype=npdt).reshape(info["shape"])
        spans.append((b, e))
    spans.sort()
    pos = 0
    for b, e in spans:
        assert b == pos, "hole/overlap in %s" % path
        pos = e
    assert pos == len(data), "trailing bytes in %s" % path
    return out, meta, list(header.keys())


# --------------------------------------------------------------------------

def _record(path):
    written.append(os.path.relpath(path, FIX))


def write_text(path, text):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    _record(path)


def dtype_name(t):
    return {torch.float32: "float32", torch.int64: "int64"}[t.dtype]


def shape_str(t):
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def parse_cfg(cfg):
    return [v if v == "M" else int(v) for v in cfg.split("-")]


def spec_string(cfg, bn, pool):
    return "vgg:cfg=%s%s,hidden=%d,pool=%d,dropout=%s" % (
        cfg, ",bn" if bn else "", HID, pool, DROPOUT)


def build_custom(name, seed):
    cfg, bn, S, _ = CUSTOM[name]
    torch.manual_seed(seed)
    layers = parse_cfg(cfg)
    C = [v for v in layers if v != "M"][-1]
    model = tvvgg.VGG(tvvgg.make_layers(layers, batch_norm=bn),
                      num_classes=K, init_weights=True, dropout=DROPOUT)
    model.avgpool = nn.AdaptiveAvgPool2d((S, S))
    model.classifier = nn.Sequential(
        nn.Linear(C * S * S, HID), nn.ReLU(True), nn.Dropout(p=DROPOUT),
        nn.Linear(HID, HID), nn.ReLU(True), nn.Dropout(p=DROPOUT),
        nn.Linear(HID, K))
    with torch.no_grad():
        for m in model.classifier:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)
        # perturb every bias so zero-bias bugs show up
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.add_(torch.randn_like(m.bias) * 0.05)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def build_tv(name):
    torch.manual_seed(0)
    with torch.no_grad():
        if name == "vgg16_classes10":
            m = torchvision.models.vgg16(weights=None, init_weights=False)
            m.classifier[6] = nn.Linear(4096, 10)
        else:
            m = getattr(torchvision.models, name)(weights=None,
                                                  init_weights=False)
    return m


def write_state_keys(name, model):
    lines = ["%s\t%s\t%s\n" % (k, dtype_name(v), shape_str(v))
             for k, v in model.state_dict().items()]
    write_text(os.path.join(FIX, "state_keys", name + ".tsv"), "".join(lines))


def gen_parity(name, seed):
    cfg, bn, S, H = CUSTOM[name]
    spec = spec_string(cfg, bn, S)
    for mi, mode in enumerate(("eval", "train")):
        model = build_custom(name, seed)  # identical initial weights per mode
        if mode == "eval":
            model.eval()
        else:
            model.train()
            for m in model.modules():
                if isinstance(m, nn.Dropout):
                    m.p = 0.0
        sd_before = [(k, v.detach().clone()) for k, v in
                     model.state_dict().items()]
        torch.manual_seed(seed * 100 + 17 + mi)
        x = torch.randn(N, 3, H, H, requires_grad=True)
        labels = torch.randint(0, K, (N,), dtype=torch.int64)
        out = model(x)
        loss = nn.CrossEntropyLoss()(out, labels)
        loss.backward()

        io = [("input", x.detach()), ("labels", labels),
              ("output", out.detach()), ("loss", loss.detach().reshape(1)),
              ("grad_input", x.grad)]
        for pname, p in model.named_parameters():
            io.append(("grad." + pname, p.grad))
        if mode == "train":
            for bname, b in model.named_buffers():
                io.append(("after." + bname, b.detach()))
        meta = {"arch": spec, "num_classes": str(K), "mode": mode,
                "torch": torch.__version__,
                "torchvision": torchvision.__version__}
        base = os.path.join(FIX, "vgg", "%s_%s" % (name, mode))
        st_write(base + ".weights.safetensors", sd_before, meta)
        st_write(base + ".io.safetensors", io, meta)
        # keep for self-check
        EXPECT[base + ".weights.safetensors"] = (sd_before, meta)
        EXPECT[base + ".io.safetensors"] = (io, meta)


EXPECT = {}


def self_check():
    for path, (tensors, meta) in EXPECT.items():
        arrs, m2, order = st_read(path)
        assert m2 == meta, path
        assert order == [n for n, _ in tensors], path
        for n, t in tensors:
            ref = t.detach().cpu().numpy()
            got = arrs[n]
            assert got.shape == ref.shape, (path, n)
            assert got.dtype == ref.dtype, (path, n)
            assert np.array_equal(got, ref), (path, n)
            if got.dtype == np.float32:
                assert np.all(np.isfinite(got)), (path, n)
        # sanity: every parameter gradient present and non-zero somewhere
        if path.endswith(".io.safetensors"):
            for n in order:
                if n.startswith("grad."):
                    assert np.any(arrs[n] != 0), (path, n)
    # byte-exact re-read of text files against the manifest hashes is done
    # by write_manifest(); here just check files exist and are non-empty
    for rel in written:
        assert os.path.getsize(os.path.join(FIX, rel)) > 0, rel


def write_manifest():
    rows = []
    total = 0
    for rel in sorted(set(written)):
        p = os.path.join(FIX, rel)
        with open(p, "rb") as f:
            data = f.read()
        total += len(data)
        rows.append("%s\t%d\t%s\n" % (rel, len(data),
                                      hashlib.sha256(data).hexdigest()))
    mpath = os.path.join(FIX, "MANIFEST.tsv")
    with open(mpath, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(rows))
    total += os.path.getsize(mpath)
    # verify manifest by re-reading
    with open(mpath, encoding="utf-8") as f:
        for line in f:
            rel, size, digest = line.rstrip("\n").split("\t")
            with open(os.path.join(FIX, rel), "rb") as g:
                data = g.read()
            assert len(data) == int(size), rel
            assert hashlib.sha256(data).hexdigest() == digest, rel
    return len(rows) + 1, total


def main():
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    for sub in ("print", "state_keys", "vgg"):
        d = os.path.join(FIX, sub)
        os.makedirs(d, exist_ok=True)
        for fn in os.listdir(d):  # drop stale outputs of this script only (print/ also holds ResNet's)
            if sub != "print" or fn.startswith("vgg") or fn in ("params.tsv",) or fn.startswith(tuple(CUSTOM)):
                os.remove(os.path.join(d, fn))

    params_rows = []
    for name in TV_NAMES + ["vgg16_classes10"]:
        m = build_tv(name)
        write_text(os.path.join(FIX, "print", name + ".txt"), repr(m) + "\n")
        params_rows.append((name, sum(p.numel() for p in m.parameters()),
                            len(m.state_dict())))
        if name in ("vgg16", "vgg11_bn"):
            write_state_keys(name, m)
        del m

    for i, name in enumerate(CUSTOM):
        m = build_custom(name, seed=1000 + i)
        write_text(os.path.join(FIX, "print", name + ".txt"), repr(m) + "\n")
        params_rows.append((name, sum(p.numel() for p in m.parameters()),
                            len(m.state_dict())))
        write_state_keys(name, m)
        gen_parity(name, seed=1000 + i)

    write_text(os.path.join(FIX, "print", "params.tsv"),
               "".join("%s\t%d\t%d\n" % r for r in params_rows))

    self_check()
    nfiles, total = write_manifest()
    # this script's own outputs stay small (all committed fixtures stay under 20 MB)
    tree_total = total
    assert tree_total < MAX_TOTAL, "VGG fixtures exceed 5 MB: %d" % tree_total
    print("self-check OK")
    print("files: %d (incl. MANIFEST.tsv), total bytes: %d (tree %d)"
          % (nfiles, total, tree_total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
