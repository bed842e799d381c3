#!/usr/bin/python3
"""compare.py — graft against PyTorch on the same machine, in one invocation.

Runs `graft bench ...` and the equivalent PyTorch program (Debian's python3-torch
1.13 / torchvision 0.14, run as /usr/bin/python3) with the same threads, batch and data
shapes, and prints one table: each benchmark's speed in both, the ratio, graft's share
of the machine's SGEMM peak, and peak RSS.

    bench/compare.py --graft build/graft                 # the full comparison
    bench/compare.py --graft build/graft --quick         # minutes instead of an hour
    bench/compare.py --graft build/graft --native-blas   # OpenBLAS picks its own kernels

Rows (VGG16 unless noted, float32, random data of the stated shapes, eval mode unless noted):
  features 32x32 / 224x224   forward through model.features, avgpool and flatten (all but
                             the classifier: what a frozen trunk's feature cache computes)
  eval 32x32                 whole model, 10-class head, eval mode, no_grad
  train step 32x32           the recipe's step: train mode, features frozen, 10-class head,
                             cross-entropy, backward, SGD lr 0.001 momentum 0.9
  resnet50 features 224x224  resnet50's trunk: every module but fc, then flatten (2048 per image)
  recipe E epochs            the recipe end to end on a synthetic CIFAR-10 (random uint8
                             pixels, 50,000 + 10,000 images; ToTensor and Normalize per
                             sample; train, then evaluate, each epoch).  graft runs all of
                             it (`graft bench recipe`, from CIFAR's binary files).  PyTorch's time is
                             measured on a subset for one epoch and extrapolated: seconds per
                             training image x 50,000 x E + seconds per test image x 10,000 x E.
  sgemm peak                 `graft bench gemm`: 4096^3 SGEMM through graft's own GEMM path
                             (OpenBLAS), the best of a run before and one after the model rows;
                             "% sgemm peak" is graft's features speed in GFLOP/s over it,
                             counting the direct convolution's multiply-adds (graft's
                             Winograd kernel does fewer, so it can pass 100%)

Environment: both programs get the same environment.  By default it is left as it is; with
--native-blas the script removes OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for both (they force
OpenBLAS onto older kernels; see docs/performance.md) and says so.  PyTorch also gets
OMP_NUM_THREADS=T and torch.set_num_threads(T); graft gets --threads T.

Medians of --iters timed iterations after warm-up; each benchmark runs graft and PyTorch
back to back so load from other processes affects both alike.  Ratios are graft's speed
over PyTorch's (> 1: graft is faster).
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap

PYTHON = "/usr/bin/python3"

# The PyTorch side, run in a fresh interpreter per benchmark so peak RSS is its own.
TORCH_PROGRAM = r'''
import json, resource, sys, time
import torch, torchvision
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
B, S, iters, warmup = cfg["batch"], cfg["size"], cfg["iters"], cfg["warmup"]

def recipe_model():
    m = torchvision.models.vgg16()
    m.classifier[6] = torch.nn.Linear(4096, 10)
    for p in m.features.parameters():
        p.requires_grad = False
    return m

def timed(step):
    times = []
    for i in range(warmup + iters):
        t = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]

mode = cfg["mode"]
out = {}
if mode in ("features", "eval"):
    m = getattr(torchvision.models, cfg.get("model", "vgg16"))() if mode == "features" else recipe_model()
    m.eval()
    # features: every step but the head (VGG's classifier, ResNet's fc), as `graft bench
    # features` runs it
    trunk = torch.nn.Sequential(*list(m.children())[:-1])
    net = (lambda x: torch.flatten(trunk(x), 1)) if mode == "features" else m
    x = torch.rand(B, 3, S, S) * 4 - 2
    with torch.no_grad():
        out["images_per_s"] = B / timed(lambda: net(x))
elif mode == "train-step":
    m = recipe_model()
    m.train()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.rand(B, 3, S, S) * 4 - 2
    y = torch.randint(0, 10, (B,))
    def step():
        opt.zero_grad()
        loss = loss_fn(m(x), y)
        loss.backward()
        opt.step()
    out["images_per_s"] = B / timed(step)
elif mode == "recipe":
    # The tutorial's loop on a synthetic CIFAR-10: held in memory as torchvision's CIFAR10
    # holds it (uint8 [N, 32, 32, 3]), each sample made a PIL image and put through
    # ToTensor and Normalize as CIFAR10.__getitem__ does; a subset is run for one epoch.
    import numpy as np
    from PIL import Image
    import torchvision.transforms as T
    tf = T.Compose([T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    class Cifar(torch.utils.data.Dataset):
        def __init__(self, data, targets):
            self.data, self.targets = data, targets
        def __len__(self):
            return len(self.data)
        def __getitem__(self, i):
            return tf(Image.fromarray(self.data[i])), self.targets[i]
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (cfg["train"], 32, 32, 3), dtype=np.uint8)
    train_y = rng.integers(0, 10, cfg["train"]).tolist()
    test_x = rng.integers(0, 256, (cfg["test"], 32, 32, 3), dtype=np.uint8)
    test_y = rng.integers(0, 10, cfg["test"]).tolist()
    sub_train, sub_test = cfg["sub_train"], cfg["sub_test"]
    train = Cifar(train_x[:sub_train], train_y[:sub_train])
    test = Cifar(test_x[:sub_test], test_y[:sub_test])
    train_loader = torch.utils.data.DataLoader(train, batch_size=B, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test, batch_size=B, shuffle=False)
    m = recipe_model()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    m.train()
    def batches(loader):
        """(seconds spent loading it, x, y) per batch: the loader's time counts too."""
        it = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                return
            yield time.perf_counter() - t, x, y
    seen, t_train = 0, 0.0
    for i, (t_load, x, y) in enumerate(batches(train_loader)):
        t = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(m(x), y)
        loss.backward()
        opt.step()
        if i >= warmup:  # the first batches pay for allocation
            t_train += t_load + time.perf_counter() - t
            seen += x.shape[0]
    m.eval()
    tested, t_test = 0, 0.0
    with torch.no_grad():
        for i, (t_load, x, y) in enumerate(batches(test_loader)):
            t = time.perf_counter()
            m(x).argmax(1).eq(y).sum()
            if i >= warmup:
                t_test += t_load + time.perf_counter() - t
                tested += x.shape[0]
    out["train_s_per_image"] = t_train / seen
    out["test_s_per_image"] = t_test / tested
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["torch"] = torch.__version__
print(json.dumps(out))
'''


def run(cmd, env, what):
    try:
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    except OSError as e:
        sys.exit(f"compare.py: {what}: {e}")
    if p.returncode != 0:
        sys.exit(f"compare.py: {what} failed ({p.returncode}):\n{p.stderr.strip()}")
    return p.stdout


def graft_bench(graft, env, args):
    """Runs graft bench; returns (the last line's number, {key: value} of the other lines)."""
    out = run([graft, "bench"] + args, env, "graft bench " + " ".join(args)).strip().splitlines()
    info = {}
    for line in out:
        parts = line.split()
        if len(parts) >= 2:
            info[parts[0]] = parts[-1]
    return float(out[-1].split()[1]), info


def torch_bench(env, cfg):
    out = run([PYTHON, "-c", TORCH_PROGRAM, json.dumps(cfg)], env, "PyTorch " + cfg["mode"])
    return json.loads(out.strip().splitlines()[-1])


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True).stdout or "?"
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=textwrap.dedent(__doc__.split("\n", 2)[2]))
    ap.add_argument("--graft", default=None, help="the graft binary (default: build/graft, then PATH)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batch-224", type=int, default=16, help="batch for the 224x224 row (default 16)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default 5)")
    ap.add_argument("--epochs", type=int, default=None, help="recipe epochs (default 10)")
    ap.add_argument("--train", type=int, default=None, help="training images per epoch (default 50,000)")
    ap.add_argument("--test", type=int, default=None, help="test images per epoch (default 10,000)")
    ap.add_argument("--torch-subset", type=int, default=1280,
                    help="training images PyTorch runs for its one measured epoch (default 1,280; test: a quarter)")
    ap.add_argument("--no-recipe", action="store_true", help="skip the end-to-end rows")
    ap.add_argument("--quick", action="store_true",
                    help="defaults for a few minutes' run: 1 epoch of 5,000 + 1,000 images, 3 iterations")
    ap.add_argument("--native-blas", action="store_true",
                    help="unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for both programs")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    a = ap.parse_args()
    defaults = {"epochs": 10, "train": 50000, "test": 10000, "iters": 5}
    if a.quick:
        defaults = {"epochs": 1, "train": 5000, "test": 1000, "iters": 3}
    for key, value in defaults.items():  # flags given explicitly win over --quick
        if getattr(a, key) is None:
            setattr(a, key, value)

    graft = a.graft or ("build/graft" if os.path.exists("build/graft") else shutil.which("graft"))
    if not graft or not os.path.exists(graft):
        sys.exit("compare.py: no graft binary: build it (cmake --build build) or pass --graft PATH")

    env = dict(os.environ)
    changed = []
    if a.native_blas:
        for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
            if var in env:
                changed.append(f"unset {var} (was {env.pop(var)})")
            else:
                changed.append(f"unset {var} (was not set)")
    env["OMP_NUM_THREADS"] = str(a.threads)
    changed.append(f"OMP_NUM_THREADS={a.threads} (PyTorch's pool; graft gets --threads {a.threads})")
    T = ["--threads", str(a.threads)]
    rows = []

    def progress(msg):
        print(f"compare.py: {msg}", file=sys.stderr, flush=True)

    def model_row(name, mode, size, batch, extra=(), model="vgg16"):
        progress(f"{name} ...")
        g, ginfo = graft_bench(graft, env, [mode, "--model", model, "--size", str(size), "--batch", str(batch),
                                            "--iters", str(a.iters)] + list(extra) + T)
        t = torch_bench(env, {"mode": mode, "model": model, "threads": a.threads, "batch": batch, "size": size,
                              "iters": a.iters, "warmup": 2})
        rows.append({"name": name, "unit": "img/s", "graft": g, "torch": t["images_per_s"],
                     "ratio": g / t["images_per_s"], "graft_rss_mb": float(ginfo.get("peak_rss_mb", "nan")),
                     "torch_rss_mb": t["peak_rss_mb"]})
        return rows[-1]

    def sgemm_peak():
        progress("sgemm peak ...")
        return graft_bench(graft, env, ["gemm", "--iters", "5"] + T)[0]

    # The peak is the best of two measurements, before and after the model rows: on a
    # shared machine a single one may fall in someone else's busy moment.
    peak = sgemm_peak()
    f32 = model_row(f"features 32x32, batch {a.batch}", "features", 32, a.batch)
    f224 = model_row(f"features 224x224, batch {a.batch_224}", "features", 224, a.batch_224)
    model_row(f"eval 32x32, batch {a.batch}", "eval", 32, a.batch, ["--num-classes", "10"])
    model_row(f"train step 32x32, batch {a.batch}", "train-step", 32, a.batch, ["--num-classes", "10"])
    r50 = model_row(f"resnet50 features 224x224, batch {a.batch_224}", "features", 224, a.batch_224,
                    model="resnet50")
    peak = max(peak, sgemm_peak())
    # VGG16's features: 0.6266 GFLOP per 32x32 image, 15.36 per 224x224 image (multiply-adds x 2)
    # and resnet50's trunk 8.18 per 224x224 image
    flops = {"features 32": 0.6266e9, "features 224": 15.36e9, "resnet50 224": 8.18e9}
    f32["pct_peak"] = 100 * f32["graft"] * flops["features 32"] / 1e9 / peak
    f224["pct_peak"] = 100 * f224["graft"] * flops["features 224"] / 1e9 / peak
    r50["pct_peak"] = 100 * r50["graft"] * flops["resnet50 224"] / 1e9 / peak

    if not a.no_recipe:
        progress(f"recipe, graft: {a.epochs} epochs of {a.train:,} + {a.test:,} images ...")
        gs, ginfo = graft_bench(graft, env, ["recipe", "--epochs", str(a.epochs), "--train", str(a.train),
                                             "--test", str(a.test), "--batch", str(a.batch)] + T)
        sub_train = min(a.torch_subset, a.train)
        sub_test = min(max(a.torch_subset // 4, a.batch * 3), a.test)
        progress(f"recipe, PyTorch: one epoch of {sub_train:,} + {sub_test:,} images, extrapolated ...")
        t = torch_bench(env, {"mode": "recipe", "threads": a.threads, "batch": a.batch, "size": 32, "iters": 0,
                              "warmup": 2, "train": a.train, "test": a.test, "sub_train": sub_train,
                              "sub_test": sub_test})
        ts = a.epochs * (t["train_s_per_image"] * a.train + t["test_s_per_image"] * a.test)
        rows.append({"name": f"recipe, {a.epochs} epochs x ({a.train:,} + {a.test:,})", "unit": "s",
                     "graft": gs, "torch": ts, "ratio": ts / gs, "torch_extrapolated": True,
                     "graft_rss_mb": float(ginfo.get("peak_rss_mb", "nan")), "torch_rss_mb": t["peak_rss_mb"]})

    # ---- the table ----
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"graft vs PyTorch — {now}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; threads {a.threads}")
    print(f"versions: {run([graft, '--version'], env, 'graft --version').strip()}, "
          f"python3-torch {package_version('python3-torch')}, "
          f"libopenblas0-pthread {package_version('libopenblas0-pthread')}")
    print("environment: " + "; ".join(changed))
    print(f"sgemm peak (graft bench gemm, 4096^3): {peak:.1f} GFLOP/s")
    print()
    print(f"| {'benchmark':<40} | {'graft':>10} | {'PyTorch':>10} | {'ratio':>6} | {'% sgemm peak':>12} |"
          f" {'RSS graft':>9} | {'RSS torch':>9} |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 12}|{'-' * 8}|{'-' * 14}|{'-' * 11}|{'-' * 11}|")
    for r in rows:
        unit = r["unit"]
        fmt = (lambda v: f"{v:,.1f} s") if unit == "s" else (lambda v: f"{v:,.1f}")
        pct = f"{r['pct_peak']:.0f}%" if "pct_peak" in r else ""
        torch_s = fmt(r["torch"]) + ("*" if r.get("torch_extrapolated") else "")
        print(f"| {r['name'] + (' (img/s)' if unit != 's' else ''):<40} | {fmt(r['graft']):>10} | {torch_s:>10} |"
              f" {r['ratio']:>5.2f}x | {pct:>12} | {r['graft_rss_mb']:>6.0f} MB | {r['torch_rss_mb']:>6.0f} MB |")
    if any("pct_peak" in r for r in rows):
        print("\n% sgemm peak counts the direct convolution's multiply-adds; graft's 3x3 convolutions run "
              "Winograd F(2x2, 3x3) or F(4x4, 3x3), which do 2.25x and 4x fewer multiplications, so the figure "
              "can pass 100%.")
    if any(r.get("torch_extrapolated") for r in rows):
        print("\n* PyTorch's recipe time is extrapolated from one measured epoch on a subset "
              f"({a.torch_subset:,} training images, their share of the test split); its RSS is that run's, "
              "with the full dataset in memory.")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"date": now, "threads": a.threads, "sgemm_peak_gflops": peak, "environment": changed,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
