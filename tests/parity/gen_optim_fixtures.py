#!/usr/bin/python3
"""Generate PyTorch 1.13 reference fixtures for graft's optimisers and LR schedules.

Run from the repository root with the system Python that has torch:

    /usr/bin/python3 tests/parity/gen_optim_fixtures.py

Outputs (under tests/parity/fixtures/optim/, committed so CI never needs torch):

  CONFIG.safetensors   one optimiser run (configs in CONFIGS below): K=6 steps over
                       five parameters in two groups (group 0 "trunk", group 1 "head"),
                       one of them frozen (requires_grad=False, so p.grad stays None).
                       A StepLR(step_size=2, gamma=0.5) is stepped after every
                       optimiser step, so the learning rate changes during the run.
      init.P           parameter P before the first step
      grad.K.P         gradient of P used by step K (1..6); absent for the frozen one
      after.K.P        parameter P after step K
      state.P.KEY      optimizer.state[P][KEY] after the last step (step as int64)
      __metadata__     config (JSON of the optimiser's options), lr.K (JSON list of the
                       group learning rates used by step K, repr of the Python floats)
  schedules.tsv        spec<TAB>group<TAB>base_lr<TAB>t<TAB>lr: torch.optim.lr_scheduler
                       values for t = 0..30 (group['lr'] after t scheduler steps), two
                       param groups, spec in graft_schedule_parse's syntax
  MANIFEST.tsv         path<TAB>size<TAB>sha256 of every file above

Every optimiser runs its single-tensor code path (foreach=False).  The script is
deterministic (fixed seeds) and re-reads every safetensors file it writes.
"""

import hashlib
import json
import os
import struct
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(ROOT, "fixtures", "optim")
MAX_TOTAL = 500 * 1024
K = 6
SCHED_T = 30

# name, shape, group (0 trunk, 1 head), trainable.  221 = 27*8 + 5 elements exercises
# both the vectorised body and the scalar tail of PyTorch's CPU kernels.
PARAMS = [
    ("trunk.weight", (17, 13), 0, True),
    ("trunk.bias", (17,), 0, True),
    ("frozen.weight", (4, 3), 0, False),
    ("head.weight", (3, 17), 1, True),
    ("head.bias", (3,), 1, True),
]

# name -> (torch class, group lrs, options)
CONFIGS = {
    "sgd_plain": (torch.optim.SGD, (0.1, 0.5), {}),
    "sgd_momentum_wd": (torch.optim.SGD, (0.05, 0.2), {"momentum": 0.9, "weight_decay": 5e-4}),
    "sgd_nesterov_wd": (torch.optim.SGD, (0.05, 0.2), {"momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}),
    "sgd_dampening": (torch.optim.SGD, (0.05, 0.2), {"momentum": 0.9, "dampening": 0.1}),
    "adam": (torch.optim.Adam, (1e-3, 1e-2), {}),
    "adam_wd": (torch.optim.Adam, (1e-3, 1e-2), {"weight_decay": 1e-2}),
    "adamw": (torch.optim.AdamW, (1e-3, 1e-2), {"weight_decay": 0.01}),
    "adam_amsgrad": (torch.optim.Adam, (1e-3, 1e-2), {"amsgrad": True}),
}

written = []


# ---------------------------------------------------------------------------
# safetensors, written by hand: 8-byte little-endian header length, JSON header,
# data in header order with no holes.

_DT = {torch.float32: ("F32", "<f4"), torch.int64: ("I64", "<i8")}
_NP = {"F32": "<f4", "I64": "<i8"}


def st_write(path, tensors, metadata):
    header, blobs, off = {}, [], 0
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        code, npdt = _DT[t.dtype]
        data = t.numpy().astype(npdt, copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    written.append(path)


def st_read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    out, ends = {}, []
    for name, e in header.items():
        b, en = e["data_offsets"]
        ends.append((b, en))
        arr = np.frombuffer(data[b:en], dtype=_NP[e["dtype"]]).reshape(e["shape"])
        out[name] = torch.from_numpy(arr.copy())
    ends.sort()
    pos = 0
    for b, en in ends:  # contiguous, no holes, nothing after
        assert b == pos, path
        pos = en
    assert pos == len(data), path
    return out, meta


# ---------------------------------------------------------------------------
# optimisers


def make_params(gen):
    params = []
    for name, shape, _, trainable in PARAMS:
        p = torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.5).float())
        p.requires_grad_(trainable)
        params.append(p)
    return params


def make_grads(gen):
    """grads[k][i] for step k = 0..K-1 (None for the frozen parameter).  The scale varies
    by step so AMSGrad's running maximum switches between old and new values."""
    grads = []
    for k in range(K):
        scale = 0.1 * (1 + (k % 3))
        row = []
        for name, shape, _, trainable in PARAMS:
            g = (torch.randn(shape, generator=gen) * scale).float()
            if "bias" in name and k == 2:
                g[0] = 0.0  # an exact zero gradient
            row.append(g if trainable else None)
        grads.append(row)
    return grads


def run_config(name, cls, lrs, opts):
    gen = torch.Generator().manual_seed(1234)
    params = make_params(gen)
    grads = make_grads(gen)
    tensors = [("init." + pn, p.detach().clone()) for (pn, _, _, _), p in zip(PARAMS, params)]
    groups = []
    for g, lr in enumerate(lrs):
        groups.append({"params": [p for (_, _, grp, _), p in zip(PARAMS, params) if grp == g], "lr": lr})
    opt = cls(groups, foreach=False, **opts)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    meta = {"config": json.dumps({"optimizer": cls.__name__, "lr": list(lrs), **opts}, sort_keys=True)}
    for k in range(K):
        meta["lr.%d" % (k + 1)] = json.dumps([repr(g["lr"]) for g in opt.param_groups])
        for (pn, _, _, _), p, g in zip(PARAMS, params, grads[k]):
            p.grad = None if g is None else g.clone()
            if g is not None:
                tensors.append(("grad.%d.%s" % (k + 1, pn), g))
        opt.step()
        sched.step()
        for (pn, _, _, _), p in zip(PARAMS, params):
            tensors.append(("after.%d.%s" % (k + 1, pn), p.detach().clone()))
    assert torch.equal(params[2].detach(), tensors[2][1]), "the frozen parameter moved"
    for (pn, _, _, _), p in zip(PARAMS, params):
        for key, v in opt.state[p].items():
            if key == "step":
                v = torch.tensor(int(v.item()), dtype=torch.int64)
            if v is None:
                continue
            tensors.append(("state.%s.%s" % (pn, key), v.detach().clone()))
    path = os.path.join(OUT, name + ".safetensors")
    st_write(path, tensors, meta)
    back, bmeta = st_read(path)
    assert list(back) == [n for n, _ in tensors]
    for n, t in tensors:
        assert torch.equal(back[n], t), n
    assert bmeta == meta
    return len(tensors)


# ---------------------------------------------------------------------------
# schedules: spec (graft's syntax) -> a function building the torch scheduler


def linear_then(opt, start, w, main):
    return torch.optim.lr_scheduler.SequentialLR(
        opt, [torch.optim.lr_scheduler.LinearLR(opt, start_factor=start, end_factor=1.0, total_iters=w), main(opt)],
        milestones=[w])


S = torch.optim.lr_scheduler
SCHEDULES = [
    ("constant", lambda o: None),
    ("step:step_size=7,gamma=0.1", lambda o: S.StepLR(o, step_size=7, gamma=0.1)),
    ("step:step_size=3,gamma=0.5", lambda o: S.StepLR(o, step_size=3, gamma=0.5)),
    ("cosine:t_max=30", lambda o: S.CosineAnnealingLR(o, T_max=30)),
    ("cosine:t_max=10,eta_min=0.0001", lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=1e-4)),
    ("constant:warmup=4,warmup_factor=0.2", lambda o: S.LinearLR(o, start_factor=0.2, end_factor=1.0, total_iters=4)),
    ("cosine:t_max=25,warmup=5,warmup_factor=0.1",
     lambda o: linear_then(o, 0.1, 5, lambda o2: S.CosineAnnealingLR(o2, T_max=25))),
    ("step:step_size=5,gamma=0.1,warmup=3,warmup_factor=0.25",
     lambda o: linear_then(o, 0.25, 3, lambda o2: S.StepLR(o2, step_size=5, gamma=0.1))),
]
SCHED_LRS = (0.1, 0.003)


def schedule_rows():
    rows = []
    for spec, build in SCHEDULES:
        ps = [torch.nn.Parameter(torch.zeros(1)) for _ in SCHED_LRS]
        opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(ps, SCHED_LRS)], lr=SCHED_LRS[0])
        sched = build(opt)
        for t in range(SCHED_T + 1):
            for g, base in enumerate(SCHED_LRS):
                rows.append("%s\t%d\t%r\t%d\t%r" % (spec, g, base, t, opt.param_groups[g]["lr"]))
            opt.step()  # no gradients: nothing moves, but the scheduler sees the usual order
            if sched is not None:
                sched.step()
    return rows


def main():
    warnings.simplefilter("ignore")
    os.makedirs(OUT, exist_ok=True)
    for name, (cls, lrs, opts) in CONFIGS.items():
        n = run_config(name, cls, lrs, opts)
        print("%-16s %3d tensors" % (name, n))
    path = os.path.join(OUT, "schedules.tsv")
    rows = schedule_rows()
    with open(path, "w") as f:
        f.write("# spec\tgroup\tbase_lr\tt\tlr  (torch.optim.lr_scheduler, torch %s)\n" % torch.__version__)
        f.write("\n".join(rows) + "\n")
    written.append(path)
    print("schedules.tsv    %d rows" % len(rows))
    total = 0
    lines = []
    for p in sorted(written):
        data = open(p, "rb").read()
        total += len(data)
        lines.append("%s\t%d\t%s" % (os.path.relpath(p, OUT), len(data), hashlib.sha256(data).hexdigest()))
    with open(os.path.join(OUT, "MANIFEST.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    assert total < MAX_TOTAL, "fixtures too large: %d bytes" % total
    print("total %d bytes" % total)


if __name__ == "__main__":
    main()
