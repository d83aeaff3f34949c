"""Pixel-by-pixel image classification: sequential CIFAR-10 (LRA "Image") and (permuted) sequential MNIST.

Shape legend: N examples, L pixels in row-major order, F channels (``input_dim``).

  image    grayscale CIFAR-10 (LRA §3.4): L = 1024, F = 1. Gray = round(0.2989 R + 0.5870 G + 0.1140 B)
           (``tf.image.rgb_to_grayscale``). Train = first 45k of the training batches, val = last 5k,
           test = ``test_batch`` (10k), as LRA.
  scifar   the same images in colour: L = 1024, F = 3 (LRU paper's sCIFAR).
  smnist   MNIST, L = 784, F = 1; train = first 55k, val = last 5k of the training set, test 10k.
  psmnist  smnist with one fixed pixel permutation, ``np.random.default_rng(PERMUTATION_SEED)``.

Inputs are real (B, L, F) float32 in [-1, 1] (pixel / 127.5 - 1), or with ``tokens=True`` (one channel
only) pixel ids 1..256 (vocab 257, 0 = padding). 10 classes; chance 0.1.

Files: CIFAR-10 python version (``cifar-10-batches-py/data_batch_{1..5}``, ``test_batch``: pickled dicts
with ``b"data"`` (10000, 3072) uint8 planes R, G, B and ``b"labels"``); MNIST IDX files
``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (optionally ``.gz``).
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from algornn.experiments.tasks._base import Task, pixel_converter
from algornn.experiments.tasks._registry import missing_files_error, register
from algornn.scan_kernels._common.validate import check_bool

CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (unpack to get cifar-10-batches-py/)"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_SOURCE = "the four MNIST IDX files (http://yann.lecun.com/exdb/mnist/ or a mirror), .gz or unpacked"
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140])
PERMUTATION_SEED = 0


def _root(data_dir) -> Path:
    return Path("<data_dir>") if data_dir is None else Path(data_dir).expanduser()


# ---------------------------------------------------------------------- CIFAR-10
def find_cifar_dir(data_dir) -> Path:
    root = _root(data_dir)
    for c in (root / "cifar-10-batches-py", root):
        if all((c / f).is_file() for f in CIFAR_FILES):
            return c
    raise missing_files_error("image", data_dir, [f"{root}/cifar-10-batches-py/{f}" for f in CIFAR_FILES], CIFAR_SOURCE)


def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: images (N, 32, 32, 3) uint8 and labels (N,)."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    data = np.asarray(d[b"data"], np.uint8)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(d[b"labels"], np.int8)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) uint8 luminance."""
    return np.clip(np.round(rgb.astype(np.float64) @ GRAY_WEIGHTS), 0, 255).astype(np.uint8)


def _cifar_loader(folder: Path, colour: bool):
    def load(split):
        names = CIFAR_FILES[:5] if split != "test" else CIFAR_FILES[5:]
        parts = [read_cifar_batch(folder / n) for n in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if split != "test":
            cut = len(labels) * 9 // 10  # 45k / 5k
            sl = slice(0, cut) if split == "train" else slice(cut, None)
            images, labels = images[sl], labels[sl]
        x = images.reshape(len(labels), 1024, 3) if colour else to_gray(images).reshape(len(labels), 1024)
        return {"inputs": x, "labels": labels, "lengths": np.full(len(labels), 1024, np.int32)}

    return load


@register("image")
def image(*, data_dir=None, tokens=False):
    """Grayscale sequential CIFAR-10 (LRA Image) from ``data_dir``."""
    check_bool("tokens", tokens)
    folder = find_cifar_dir(data_dir)
    return Task(
        name="image",
        num_classes=10,
        seq_len=1024,
        vocab_size=257 if tokens else None,
        input_dim=None if tokens else 1,
        chance=0.1,
        options=dict(data_dir=data_dir, tokens=tokens),
        convert=pixel_converter(tokens),
        description=__doc__,
        load_split=_cifar_loader(folder, False),
    )


@register("scifar")
def scifar(*, data_dir=None):
    """Colour sequential CIFAR-10 (3 channels) from ``data_dir``."""
    folder = find_cifar_dir(data_dir)
    return Task(
        name="scifar",
        num_classes=10,
        seq_len=1024,
        input_dim=3,
        chance=0.1,
        options=dict(data_dir=data_dir),
        convert=pixel_converter(False),
        description=__doc__,
        load_split=_cifar_loader(folder, True),
    )


# ---------------------------------------------------------------------- MNIST
def read_idx(path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array of its declared shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header shape {shape} does not match {data.size} bytes of data")
    return data.reshape(shape)


def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends in .gz)."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def find_mnist_files(data_dir, task) -> dict[str, Path]:
    root = _root(data_dir)
    for c in (root, root / "MNIST" / "raw", root / "mnist"):
        found = {}
        for name in MNIST_FILES:
            for cand in (c / name, c / f"{name}.gz"):
                if cand.is_file():
                    found[name] = cand
                    break
        if len(found) == len(MNIST_FILES):
            return found
    raise missing_files_error(task, data_dir, [f"{root}/{n}[.gz]" for n in MNIST_FILES], MNIST_SOURCE)


def _mnist_loader(files, permutation):
    def load(split):
        prefix = "t10k" if split == "test" else "train"
        images = read_idx(files[f"{prefix}-images-idx3-ubyte"]).reshape(-1, 784)
        labels = read_idx(files[f"{prefix}-labels-idx1-ubyte"]).astype(np.int8)
        if len(images) != len(labels):
            raise ValueError(f"MNIST {prefix}: {len(images)} images but {len(labels)} labels")
        if split != "test":
            cut = len(labels) * 11 // 12  # 55k / 5k
            sl = slice(0, cut) if split == "train" else slice(cut, None)
            images, labels = images[sl], labels[sl]
        if permutation is not None:
            images = images[:, permutation]
        return {"inputs": images, "labels": labels, "lengths": np.full(len(labels), 784, np.int32)}

    return load


def _mnist(name, data_dir, tokens, permuted):
    check_bool("tokens", tokens)
    files = find_mnist_files(data_dir, name)
    perm = np.random.default_rng(PERMUTATION_SEED).permutation(784) if permuted else None
    return Task(
        name=name,
        num_classes=10,
        seq_len=784,
        vocab_size=257 if tokens else None,
        input_dim=None if tokens else 1,
        chance=0.1,
        options=dict(data_dir=data_dir, tokens=tokens),
        convert=pixel_converter(tokens),
        description=__doc__,
        load_split=_mnist_loader(files, perm),
    )


@register("smnist")
def smnist(*, data_dir=None, tokens=False):
    """Sequential MNIST from ``data_dir`` (the four IDX files)."""
    return _mnist("smnist", data_dir, tokens, False)


@register("psmnist")
def psmnist(*, data_dir=None, tokens=False):
    """Permuted sequential MNIST (one fixed permutation) from ``data_dir``."""
    return _mnist("psmnist", data_dir, tokens, True)
