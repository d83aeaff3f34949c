"""IMDb sentiment at the byte level (LRA "Text", Tay et al. 2021 §3.2; Maas et al. 2011).

Shape legend: N examples, L length (``seq_len``, default 4096).

Reads the ``aclImdb/`` directory of the Large Movie Review Dataset: ``{train,test}/{pos,neg}/*.txt``
(25k / 25k reviews). Each review's UTF-8 bytes become ids byte + 1 (vocab 257, 0 = padding), truncated
to ``seq_len``. Labels: 0 = neg, 1 = pos; chance 0.5. As in LRA, IMDb has no validation set: ``val`` is
the test set. Files are read in sorted order per folder, so the data are identical on every machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from algornn.experiments.tasks._base import Task, pad_tokens
from algornn.experiments.tasks._registry import missing_files_error, register
from algornn.scan_kernels._common.validate import check_int

SOURCE = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz (unpack to get aclImdb/)"
CLASSES = ("neg", "pos")


def encode_bytes(text: str, limit: int | None = None) -> np.ndarray:
    """UTF-8 bytes of ``text`` (at most ``limit``) as uint8; token ids are these + 1 (see ``byte_ids``)."""
    return np.frombuffer(text.encode("utf-8")[:limit], np.uint8)


def decode_bytes(ids) -> str:
    """Text of a row of token ids (byte + 1; padding ids 0 are dropped)."""
    ids = np.asarray(ids)
    return bytes((ids[ids > 0] - 1).astype(np.uint8).tolist()).decode("utf-8", errors="replace")


def byte_ids(raw: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Stored bytes (B, L) uint8 -> int32 ids byte + 1 inside each length, 0 (padding) after it.

    Documents are stored as raw bytes (half the memory of uint16 ids) and shifted per batch.
    """
    inside = np.arange(raw.shape[1])[None, :] < lengths[:, None]
    return np.where(inside, raw.astype(np.int32) + 1, 0)


def byte_converter(rows):
    out = dict(rows, inputs=byte_ids(rows["inputs"], rows["lengths"]))
    if "inputs2" in rows:
        out["inputs2"] = byte_ids(rows["inputs2"], rows["lengths2"])
    return out


def find_imdb_dir(data_dir) -> Path:
    root = Path(data_dir).expanduser()
    for c in (root / "aclImdb", root):
        if all((c / s / cls).is_dir() for s in ("train", "test") for cls in CLASSES):
            return c
    expected = [f"{root}/aclImdb/{s}/{cls}/*.txt" for s in ("train", "test") for cls in CLASSES]
    raise missing_files_error("text", data_dir, expected, SOURCE)


def read_imdb(folder: Path, part: str, seq_len: int):
    """Arrays of one part ("train" or "test"): raw bytes (N, L) uint8, labels (N,), lengths (N,)."""
    seqs, labels = [], []
    for label, cls in enumerate(CLASSES):
        files = sorted((folder / part / cls).glob("*.txt"))
        for f in files:
            seqs.append(encode_bytes(f.read_text(encoding="utf-8"), seq_len))
            labels.append(label)
    if not seqs:
        raise ValueError(f"{folder}/{part}: no reviews found in pos/ or neg/")
    inputs, lengths = pad_tokens(seqs, seq_len, np.uint8)
    return {"inputs": inputs, "labels": np.asarray(labels, np.int8), "lengths": lengths}


@register("text")
def text(*, data_dir=None, seq_len=4096):
    """IMDb byte-level classification from ``data_dir`` (holding ``aclImdb/``)."""
    seq_len = check_int("seq_len", seq_len, minimum=1)
    if data_dir is None:
        raise missing_files_error("text", None, ["<data_dir>/aclImdb/{train,test}/{pos,neg}/*.txt"], SOURCE)
    folder = find_imdb_dir(data_dir)
    parts = {"train": "train", "val": "test", "test": "test"}
    loaded = {}

    def load(split):
        part = parts[split]
        if part not in loaded:
            loaded[part] = read_imdb(folder, part, seq_len)
        return loaded[part]

    return Task(
        name="text",
        num_classes=2,
        seq_len=seq_len,
        vocab_size=257,
        chance=0.5,
        options=dict(data_dir=data_dir, seq_len=seq_len),
        convert=byte_converter,
        description=__doc__,
        load_split=load,
    )
