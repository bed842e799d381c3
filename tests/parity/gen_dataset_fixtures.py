#!/usr/bin/python3
"""Generate dataset fixtures: small CIFAR folders in torchvision's python layout, a small
ImageFolder tree, and what torchvision 0.14 makes of them.

Run from the repository root with the system Python that has torch/torchvision/PIL:

    /usr/bin/python3 tests/parity/gen_dataset_fixtures.py

Outputs, under tests/parity/fixtures/datasets/ (committed, so CI never needs Python):

  cifar10/cifar-10-batches-py/   data_batch_1..5 (3 images each), test_batch (4 images),
                                 batches.meta: pickled exactly as the real files are —
                                 Python 2's cPickle, protocol 2: every string, key and the
                                 array data are byte strings (BINSTRING opcodes), numpy
                                 arrays go through numpy.core.multiarray._reconstruct
  cifar100/cifar-100-python/     train (5 images), test (3), meta: the same, with
                                 b'fine_labels', b'coarse_labels', b'fine_label_names'
  cifar10_py3/cifar-10-batches-py/  test_batch and batches.meta re-pickled by Python 3
                                 (protocol 4, str keys, BINBYTES data), which graft also reads
  cifar10_expected.safetensors   torchvision.datasets.CIFAR10 over cifar10/ with
                                 Compose([ToTensor(), Normalize(CIFAR_MEAN, CIFAR_STD)]):
                                   train.images [15, 3, 32, 32] F32, train.labels [15] I64,
                                   test.images [4, 3, 32, 32], test.labels [4]
                                   resized.images [15, 3, 24, 24]: Compose([Resize(28),
                                   CenterCrop(24), ToTensor(), Normalize(...)]) on train
                                 __metadata__: classes (one per line), normalize and
                                 resized (the graft --transform specs of the two pipelines)
  cifar100_expected.safetensors  CIFAR100 over cifar100/: train.labels, test.labels
                                 (fine), train.images (ToTensor); __metadata__ classes
  folder/train/CLASS/...         ImageFolder tree: PNG (RGB, L, RGBA, P), JPEG, BMP, an
                                 upper-case extension, nested folders whose os.walk order
                                 differs from a depth-first walk, and a .txt that is not a
                                 sample; folder/test/ the same classes
  folder_expected.safetensors    ImageFolder(folder/train) with Compose([Resize(20),
                                 CenterCrop(16), ToTensor()]): images [N, 3, 16, 16],
                                 labels [N]; __metadata__: classes, paths (relative to
                                 folder/train, in dataset order), transform (graft spec)
  MANIFEST.tsv                   path<TAB>size<TAB>sha256 of every file above

Deterministic (fixed seeds); everything written is re-read with torchvision and checked.
"""

import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import sys

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(ROOT, "fixtures", "datasets")
MAX_TOTAL = 1024 * 1024

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]  # the CIFAR-10 statistics commonly used with it
CIFAR_STD = [0.247, 0.2435, 0.2616]
NORMALIZE_SPEC = "normalize=0.4914:0.4822:0.4465/0.247:0.2435:0.2616"
RESIZED_SPEC = "resize=28,centercrop=24," + NORMALIZE_SPEC

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]

written = []


# --------------------------------------------------------------------------
# safetensors (a tiny writer, F32 and I64)

def st_write(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    for name, a in tensors:
        if a.dtype == np.int64:
            data, dt = np.ascontiguousarray(a, dtype="<i8").tobytes(), "I64"
        else:
            data, dt = np.ascontiguousarray(a, dtype="<f4").tobytes(), "F32"
        header[name] = {"dtype": dt, "shape": list(a.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata:
        header["__metadata__"] = metadata
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    written.append(path)


# --------------------------------------------------------------------------
# Python 2 style pickles

class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2's cPickle wrote its str: SHORT_BINSTRING or
    BINSTRING, memoized.  Everything else is pickle's protocol 2 as Python 2 wrote it."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def py2_dumps(obj):
    f = io.BytesIO()
    Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue()


def write_bytes(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    written.append(path)


def md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def cifar_images(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


# --------------------------------------------------------------------------
# CIFAR-10

def gen_cifar10(rng):
    base = os.path.join(OUT, "cifar10", "cifar-10-batches-py")
    batches = []
    for k in range(1, 6):
        data = cifar_images(rng, 3)
        labels = [int(x) for x in rng.integers(0, 10, size=3)]
        if k == 1:
            labels[0], labels[1] = 0, 9  # both ends of the range
        batches.append(("data_batch_%d" % k, data, labels))
    batches.append(("test_batch", cifar_images(rng, 4), [3, 9, 0, 5]))
    for k, (name, data, labels) in enumerate(batches):
        d = {b"batch_label": b"training batch %d of 5" % (k + 1), b"labels": labels, b"data": data,
             b"filenames": [b"img_%d.png" % i for i in range(len(labels))]}
        write_bytes(os.path.join(base, name), py2_dumps(d))
    meta = {b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_vis": 3072}
    write_bytes(os.path.join(base, "batches.meta"), py2_dumps(meta))

    # the same test batch and meta as Python 3 writes them: str keys, BINBYTES
    py3 = os.path.join(OUT, "cifar10_py3", "cifar-10-batches-py")
    name, data, labels = batches[-1]
    write_bytes(os.path.join(py3, "test_batch"),
                pickle.dumps({"batch_label": "testing batch 1 of 1", "labels": labels,
                              "data": data}, protocol=4))
    write_bytes(os.path.join(py3, "batches.meta"),
                pickle.dumps({"label_names": CIFAR10_NAMES}, protocol=4))
    return base


class SmallCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 with the checksums of the fixture files."""

    def __init__(self, root, folder, train, transform):
        self.train_list = [["data_batch_%d" % k, md5(os.path.join(folder, "data_batch_%d" % k))]
                           for k in range(1, 6)]
        self.test_list = [["test_batch", md5(os.path.join(folder, "test_batch"))]]
        self.meta = dict(self.meta, md5=md5(os.path.join(folder, "batches.meta")))
        super().__init__(root, train=train, transform=transform, download=False)


class SmallCIFAR100(torchvision.datasets.CIFAR100):
    def __init__(self, root, folder, train, transform):
        self.train_list = [["train", md5(os.path.join(folder, "train"))]]
        self.test_list = [["test", md5(os.path.join(folder, "test"))]]
        self.meta = dict(self.meta, md5=md5(os.path.join(folder, "meta")))
        super().__init__(root, train=train, transform=transform, download=False)


def stack(ds):
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return torch.stack(xs).numpy(), np.array(ys, dtype=np.int64)


def expect_cifar10(folder):
    root = os.path.join(OUT, "cifar10")
    norm = T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    resized = T.Compose([T.Resize(28), T.CenterCrop(24), T.ToTensor(),
                         T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    train = SmallCIFAR10(root, folder, True, norm)
    test = SmallCIFAR10(root, folder, False, norm)
    assert train.classes == CIFAR10_NAMES, train.classes
    tx, ty = stack(train)
    ex, ey = stack(test)
    rx, ry = stack(SmallCIFAR10(root, folder, True, resized))
    assert tx.shape == (15, 3, 32, 32) and ex.shape == (4, 3, 32, 32) and rx.shape == (15, 3, 24, 24)
    assert list(ey) == [3, 9, 0, 5] and (ry == ty).all()
    st_write(os.path.join(OUT, "cifar10_expected.safetensors"),
             [("train.images", tx), ("train.labels", ty), ("test.images", ex),
              ("test.labels", ey), ("resized.images", rx)],
             {"classes": "\n".join(train.classes), "normalize": NORMALIZE_SPEC,
              "resized": RESIZED_SPEC})
    # the py3 re-pickling holds the same test split
    with open(os.path.join(OUT, "cifar10_py3", "cifar-10-batches-py", "test_batch"), "rb") as f:
        d = pickle.load(f, encoding="latin1")
    assert d["labels"] == list(ey)


# --------------------------------------------------------------------------
# CIFAR-100

def gen_cifar100(rng):
    base = os.path.join(OUT, "cifar100", "cifar-100-python")
    fine_names = ["class_%02d" % i for i in range(100)]
    fine_names[0], fine_names[99] = "apple", "worm"
    coarse_names = ["super_%02d" % i for i in range(20)]
    for name, n, fine in [("train", 5, [0, 99, 42, 7, 58]), ("test", 3, [99, 1, 63])]:
        d = {b"filenames": [b"f%d.png" % i for i in range(n)], b"batch_label": name.encode(),
             b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine],
             b"data": cifar_images(rng, n)}
        write_bytes(os.path.join(base, name), py2_dumps(d))
    meta = {b"fine_label_names": [s.encode() for s in fine_names],
            b"coarse_label_names": [s.encode() for s in coarse_names]}
    write_bytes(os.path.join(base, "meta"), py2_dumps(meta))
    return base


def expect_cifar100(folder):
    root = os.path.join(OUT, "cifar100")
    train = SmallCIFAR100(root, folder, True, T.ToTensor())
    test = SmallCIFAR100(root, folder, False, T.ToTensor())
    tx, ty = stack(train)
    _, ey = stack(test)
    assert list(ty) == [0, 99, 42, 7, 58] and list(ey) == [99, 1, 63]
    assert train.classes[0] == "apple" and train.classes[99] == "worm"
    st_write(os.path.join(OUT, "cifar100_expected.safetensors"),
             [("train.images", tx), ("train.labels", ty), ("test.labels", ey)],
             {"classes": "\n".join(train.classes)})


# --------------------------------------------------------------------------
# ImageFolder

FOLDER_FILES = [  # (path under the split, mode, (width, height), format)
    ("Zebra/z.bmp", "RGB", (21, 17), "BMP"),
    ("cat/1.png", "RGB", (30, 24), "PNG"),
    ("cat/2.JPG", "RGB", (20, 20), "JPEG"),
    ("cat/sub/3.bmp", "RGB", (22, 18), "BMP"),
    ("cat/sub b/4.png", "L", (19, 25), "PNG"),   # os.walk's sorted order puts "sub b"
    ("cat/sub/deeper/5.png", "RGBA", (18, 18), "PNG"),  # before "sub/deeper"
    ("dog/a_gray.png", "L", (16, 16), "PNG"),
    ("dog/b_rgba.png", "RGBA", (27, 21), "PNG"),
    ("dog/c_palette.png", "P", (23, 29), "PNG"),
    ("dog/d.jpeg", "RGB", (33, 20), "JPEG"),
]


def gen_folder(rng):
    base = os.path.join(OUT, "folder")
    for split, files in [("train", FOLDER_FILES), ("test", FOLDER_FILES[:2] + FOLDER_FILES[6:8])]:
        for rel, mode, (w, h), fmt in files:
            path = os.path.join(base, split, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            chans = {"RGB": 3, "L": 1, "RGBA": 4, "P": 1}[mode]
            a = rng.integers(0, 256, size=(h, w, chans), dtype=np.uint8)
            if mode == "L" or mode == "P":
                img = Image.fromarray(a[:, :, 0], "L")
                if mode == "P":
                    img = Image.fromarray(a[:, :, 0] % 64, "P")
                    img.putpalette(list(rng.integers(0, 256, size=64 * 3, dtype=np.uint8)))
            else:
                img = Image.fromarray(a, mode)
            if fmt == "JPEG":
                img.save(path, "JPEG", quality=90)
            else:
                img.save(path, fmt)
            written.append(path)
    write_bytes(os.path.join(base, "train", "dog", "notes.txt"), b"not an image\n")


def expect_folder():
    root = os.path.join(OUT, "folder", "train")
    tf = T.Compose([T.Resize(20), T.CenterCrop(16), T.ToTensor()])
    ds = torchvision.datasets.ImageFolder(root, transform=tf)
    assert ds.classes == ["Zebra", "cat", "dog"], ds.classes
    x, y = stack(ds)
    paths = [os.path.relpath(p, root) for p, _ in ds.samples]
    assert paths.index("cat/sub b/4.png") < paths.index("cat/sub/deeper/5.png")
    st_write(os.path.join(OUT, "folder_expected.safetensors"), [("images", x), ("labels", y)],
             {"classes": "\n".join(ds.classes), "paths": "\n".join(paths),
              "transform": "resize=20,centercrop=16"})


# --------------------------------------------------------------------------

def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    rng = np.random.default_rng(20240611)
    c10 = gen_cifar10(rng)
    c100 = gen_cifar100(rng)
    gen_folder(rng)
    expect_cifar10(c10)
    expect_cifar100(c100)
    expect_folder()

    total, lines = 0, []
    for p in sorted(written):
        with open(p, "rb") as f:
            b = f.read()
        total += len(b)
        lines.append("%s\t%d\t%s" % (os.path.relpath(p, OUT), len(b), hashlib.sha256(b).hexdigest()))
    with open(os.path.join(OUT, "MANIFEST.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    assert total < MAX_TOTAL, total
    print("wrote %d files, %d bytes, under %s (torch %s, torchvision %s)" %
          (len(written), total, OUT, torch.__version__, torchvision.__version__))


if __name__ == "__main__":
    sys.exit(main())
