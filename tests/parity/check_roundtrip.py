#!/usr/bin/env python3
"""Round trip through PyTorch: files graft writes load back into torchvision unchanged.

Run from the repository root after building (needs PyTorch, so CI does not run it):

    /usr/bin/python3 tests/parity/check_roundtrip.py [path/to/graft]

For torchvision's vgg11_bn (random weights) it saves the state dict with torch.save in
both layouts, has `graft convert` write each as safetensors (f32, and f16/bf16), reads
those back in Python, load_state_dict(strict=True)s them into a fresh torchvision model
and checks every tensor is equal (exactly for f32; as .half()/.bfloat16() for the
narrow types) and that the outputs agree.  Exits non-zero on any difference.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = data[b:end]
        if e["dtype"] == "BF16":  # numpy has no bfloat16: widen by hand
            t = torch.from_numpy(np.frombuffer(raw, dtype=np.int16).astype(np.int32) << 16).view(torch.float32)
        else:
            t = torch.from_numpy(np.frombuffer(raw, dtype=DTYPES[e["dtype"]]).copy()).float() \
                if e["dtype"] != "I64" else torch.from_numpy(np.frombuffer(raw, dtype=np.int64).copy())
        out[name] = t.reshape(e["shape"])
    return out


def main():
    graft = sys.argv[1] if len(sys.argv) > 1 else "build/graft"
    torch.manual_seed(3)
    ref = torchvision.models.vgg11_bn().eval()
    sd = ref.state_dict()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = ref(x)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for layout, zipfile in (("zip", True), ("legacy", False)):
            pth = os.path.join(tmp, layout + ".pth")
            torch.save(sd, pth, _use_new_zipfile_serialization=zipfile)
            for dtype, cast in (("f32", None), ("f16", torch.float16), ("bf16", torch.bfloat16)):
                st = os.path.join(tmp, "%s_%s.safetensors" % (layout, dtype))
                subprocess.run([graft, "convert", pth, st, "--dtype", dtype], check=True)
                got = read_safetensors(st)
                if list(got) != list(sd):
                    print("FAIL %s %s: key order differs" % (layout, dtype))
                    failures += 1
                    continue
                for k, v in sd.items():
                    want = v if cast is None or not v.is_floating_point() else v.to(cast).float()
                    if not torch.equal(got[k].to(v.dtype), want.to(v.dtype)):
                        print("FAIL %s %s: %s differs" % (layout, dtype, k))
                        failures += 1
                m = torchvision.models.vgg11_bn().eval()
                m.load_state_dict({k: t.to(sd[k].dtype) for k, t in got.items()}, strict=True)
                with torch.no_grad():
                    err = ((m(x) - y).abs().max() / y.abs().max()).item()
                bound = 0 if cast is None else 5e-2
                status = "ok" if err <= bound else "FAIL"
                failures += status == "FAIL"
                print("%s %-6s %-4s output rel. error %.3g" % (status, layout, dtype, err))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
