"""Pathfinder and Path-X (Linsley et al. 2018; LRA, Tay et al. 2021 §3.5): are the two markers connected?

Shape legend: N examples, S image side, L = S * S pixels in row-major order, F = 1.

``pathfinder`` is 32 px (L = 1024) and ``pathx`` 128 px (L = 16384), both ``hard`` (14 paddles) by default,
as in LRA. Inputs are real, (B, L, 1) float32 in [-1, 1], or with ``tokens=True`` pixel ids 1..256 (vocab
257, 0 = padding). Labels: 1 = markers on the same contour; classes are balanced, chance 0.5.

Sources:
  * generated (default): ``experiments.tasks._pathfinder_gen`` — vectorised; splits of ``n_train`` /
    ``n_val`` / ``n_test`` (LRA: 160k / 20k / 20k) drawn from independent streams of ``data_seed`` and
    cached as compressed ``.npz`` under ``cache_dir``.
  * ``data_dir``: the LRA release folders ``pathfinder{S}/{curv_baseline | curv_contour_length_9 |
    curv_contour_length_14}/`` with ``imgs/<k>/sample_<i>.png`` and ``metadata/<k>.npy`` (text files, one
    line per image: field 0 = image folder, 1 = file name, 3 = label). ``data_dir`` may point at the
    release root, at ``pathfinder{S}/`` or at the difficulty folder. The 200k images are split 80/10/10
    with a permutation from seed 42 (as S4 does); decoded arrays are cached like generated ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from algornn.experiments._progress import progress as progress_bar
from algornn.experiments.tasks._base import SPLITS, Task, pixel_converter
from algornn.experiments.tasks._pathfinder_gen import CONTOUR_LENGTH, SIZES, generate_images
from algornn.experiments.tasks._registry import cache_path, missing_files_error, register
from algornn.scan_kernels._common.validate import check_bool, check_choice, check_int

DIFFICULTY_DIRS = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9", "hard": "curv_contour_length_14"}
RELEASE_SPLIT = (0.8, 0.1, 0.1)
RELEASE_SEED = 42


def generate(n: int, seed: int, *, size=32, difficulty="hard", progress=False):
    """``n`` balanced images: ``(images (n, S, S) uint8, labels (n,) int8, markers (n, 2, 2) (x, y))``."""
    check_choice("size", size, SIZES)
    check_choice("difficulty", difficulty, tuple(CONTOUR_LENGTH))
    return generate_images(n, np.random.default_rng(seed), size=size, difficulty=difficulty, progress=progress)


def _save(path, arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # atomic: concurrent writers never see half a file
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def _cached(path, make):
    if path is not None and path.is_file():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    arrays = make()
    if path is not None:
        _save(path, arrays)
    return arrays


def _generated_split(split, n, size, difficulty, data_seed, cache_dir):
    key = dict(size=size, difficulty=difficulty, n=n, seed=data_seed, split=split, version=1)

    def make():
        seed = (data_seed, size, tuple(CONTOUR_LENGTH).index(difficulty), SPLITS.index(split))
        images, labels, _ = generate_images(
            n, np.random.default_rng(seed), size=size, difficulty=difficulty, progress=n >= 5000
        )
        return {
            "inputs": images.reshape(n, size * size),
            "labels": labels,
            "lengths": np.full(n, size * size, np.int32),
        }

    return _cached(cache_path(cache_dir, f"pathfinder{size}-{difficulty}-{split}", key), make)


def find_release_dir(data_dir, size: int, difficulty: str) -> Path:
    """The folder holding ``metadata/`` for (size, difficulty) under ``data_dir``, or an error listing paths."""
    root = Path(data_dir).expanduser()
    sub = DIFFICULTY_DIRS[difficulty]
    candidates = [root / f"pathfinder{size}" / sub, root / "lra_release" / f"pathfinder{size}" / sub, root / sub, root]
    for c in candidates:
        if (c / "metadata").is_dir() and any((c / "metadata").glob("*.npy")):
            return c
    raise missing_files_error(
        f"pathfinder{size}",
        data_dir,
        [f"{c}/metadata/<k>.npy and {c}/imgs/<k>/sample_<i>.png" for c in candidates[:2]],
        "lra_release.gz from google-research/long-range-arena (folders lra_release/pathfinder{32,64,128,256}/)",
    )


def read_release(folder: Path, size: int, progress=False):
    """All images and labels listed by ``folder/metadata/*.npy``: ``(images (N, S, S) uint8, labels (N,))``."""
    from PIL import Image

    entries = []
    meta_files = sorted((folder / "metadata").glob("*.npy"), key=lambda p: (len(p.stem), p.stem))
    for meta in meta_files:
        for line in meta.read_text().splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            entries.append((folder / fields[0] / fields[1], int(fields[3])))
    if not entries:
        raise ValueError(f"{folder}/metadata: no entries found")
    images, labels = [], []
    bar = progress_bar(len(entries), folder.name, unit="images", enabled=progress)
    for path, label in entries:
        bar.update(1)
        if not path.is_file() or path.stat().st_size == 0:  # LRA filters empty PNGs
            continue
        img = np.asarray(Image.open(path).convert("L"))
        if img.shape != (size, size):
            raise ValueError(f"{path}: expected a {size}x{size} image, got shape {img.shape}")
        images.append(img)
        labels.append(label)
    bar.close()
    return np.stack(images), np.asarray(labels, np.int8)


def _release_split(split, folder, size, cache_dir):
    n_meta = len(list((folder / "metadata").glob("*.npy")))
    key = dict(folder=str(folder.absolute()), n_meta=n_meta, size=size, version=1)

    def make():
        images, labels = read_release(folder, size, progress=True)
        return {"images": images.reshape(len(images), size * size), "labels": labels}

    full = _cached(cache_path(cache_dir, f"pathfinder{size}-release", key), make)
    n = len(full["labels"])
    order = np.random.default_rng(RELEASE_SEED).permutation(n)
    n_train, n_val = int(RELEASE_SPLIT[0] * n), int(RELEASE_SPLIT[1] * n)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    rows = np.sort(order[slice(*bounds[split])])
    return {
        "inputs": full["images"][rows],
        "labels": full["labels"][rows],
        "lengths": np.full(rows.size, size * size, np.int32),
    }


def _build(name, size, difficulty, data_dir, n_train, n_val, n_test, data_seed, cache_dir, tokens):
    check_choice("size", size, SIZES)
    check_choice("difficulty", difficulty, tuple(CONTOUR_LENGTH))
    counts = {
        "train": check_int("n_train", n_train, minimum=2),
        "val": check_int("n_val", n_val, minimum=2),
        "test": check_int("n_test", n_test, minimum=2),
    }
    check_int("data_seed", data_seed, minimum=0)
    check_bool("tokens", tokens)
    options = dict(
        size=size,
        difficulty=difficulty,
        data_dir=data_dir,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        data_seed=data_seed,
        cache_dir=cache_dir,
        tokens=tokens,
    )
    if data_dir is not None:
        folder = find_release_dir(data_dir, size, difficulty)

        def load(split):
            return _release_split(split, folder, size, cache_dir)
    else:

        def load(split):
            return _generated_split(split, counts[split], size, difficulty, data_seed, cache_dir)

    return Task(
        name=name,
        num_classes=2,
        seq_len=size * size,
        vocab_size=257 if tokens else None,
        input_dim=None if tokens else 1,
        chance=0.5,
        options=options,
        convert=pixel_converter(tokens),
        description=__doc__,
        load_split=load,
    )


@register("pathfinder")
def pathfinder(
    *,
    size=32,
    difficulty="hard",
    data_dir=None,
    n_train=160000,
    n_val=20000,
    n_test=20000,
    data_seed=0,
    cache_dir=None,
    tokens=False,
):
    return _build("pathfinder", size, difficulty, data_dir, n_train, n_val, n_test, data_seed, cache_dir, tokens)


@register("pathx")
def pathx(
    *,
    size=128,
    difficulty="hard",
    data_dir=None,
    n_train=160000,
    n_val=20000,
    n_test=20000,
    data_seed=0,
    cache_dir=None,
    tokens=False,
):
    return _build("pathx", size, difficulty, data_dir, n_train, n_val, n_test, data_seed, cache_dir, tokens)
