"""Packed training batches: first-fit packing of variable-length examples into rows of ``seq_len``.

Shape legend: B batch (rows), L length (``seq_len``), S segments per row (``max_segments``), N examples.

A packed row holds several examples back to back; ``segment_ids (B, L)`` numbers them 1..S in order of
appearance and is 0 on the padding at the row's end. The model runs every sequence from a fresh state
(the ops' ``segment_ids`` contract, docs/ops.md) and pools per segment, so a packed row is exactly the
examples run alone; only the padding differs, and there is less of it.

Packing follows the unpacked stream's order: each epoch draws the same permutation as
``Task.batches`` (``default_rng((seed, epoch))``), places the examples in that order into the first row
with room for them (first fit, at most ``max_segments`` per row) and serves the rows in order of their
creation, ``batch_size`` per step. The number of steps per epoch is ``rows // batch_size`` (the last
partial batch is dropped), so a resumed run at ``(epoch, start_step)`` replays nothing.
"""

from __future__ import annotations

import math

import numpy as np

from algornn.experiments.tasks._base import IGNORE_INDEX, Arrays, Task, _check_batch_size, _check_shard
from algornn.scan_kernels._common.validate import check_int


def first_fit(lengths, capacity: int, max_segments: int) -> list[list[int]]:
    """Rows of example indices: each example, in order, goes into the first row with room for it.

    A row has room when its used length plus the example's length is at most ``capacity`` and it holds
    fewer than ``max_segments`` examples. O(N log N) via a max-tree over the rows' free capacity.
    """
    lengths = np.asarray(lengths, np.int64)
    capacity = check_int("capacity", capacity, minimum=1)
    max_segments = check_int("max_segments", max_segments, minimum=1)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D (N,), got shape {lengths.shape}")
    if lengths.size and (lengths.min() < 1 or lengths.max() > capacity):
        bad = lengths[(lengths < 1) | (lengths > capacity)]
        raise ValueError(f"lengths must lie in [1, capacity={capacity}]; got {np.unique(bad)[:8].tolist()}")
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    # tree[size + r] = free capacity of row r (-1 once it holds max_segments); tree[i] = max of children.
    tree = np.full(2 * size, capacity, np.int64)
    rows: list[list[int]] = []
    counts: list[int] = []
    for index, n in enumerate(lengths.tolist()):
        node = 1
        while node < size:  # descend to the leftmost leaf with free capacity >= n (the root always has one)
            node = 2 * node if tree[2 * node] >= n else 2 * node + 1
        row = node - size
        if row == len(rows):
            rows.append([])
            counts.append(0)
        rows[row].append(index)
        counts[row] += 1
        tree[node] = tree[node] - n if counts[row] < max_segments else -1
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return rows


def default_max_segments(task: Task, split: str = "train") -> int:
    """``ceil(L / shortest example)``: enough segments that no row is ever closed by the count alone."""
    lengths = task.split_arrays(split)["lengths"]
    return int(math.ceil(task.seq_len / max(int(lengths.min()), 1)))


def check_packable(task: Task) -> None:
    """Refuse tasks whose examples cannot share a row (pair documents, irregular time steps, real inputs)."""
    arrays = task.split_arrays("train")
    if task.pair or "dt" in arrays:
        raise ValueError(f"train.pack: task {task.name!r} has pair documents or time steps and cannot be packed")
    if task.vocab_size is None:
        raise ValueError(f"train.pack: task {task.name!r} has real-valued inputs; packing takes token tasks")
    if task.kind == "regression":
        raise ValueError(f"train.pack: task {task.name!r} is a regression task; packing takes classification tasks")


def pack_rows(task: Task, split: str, *, seed: int, epoch: int, max_segments: int) -> list[list[int]]:
    """The packed rows of one epoch of ``split`` (train: the epoch's permutation; else file order)."""
    lengths = task.split_arrays(split)["lengths"]
    n = len(lengths)
    order = np.random.default_rng((int(seed), int(epoch))).permutation(n) if split == "train" else np.arange(n)
    rows = first_fit(lengths[order], task.seq_len, max_segments)
    return [[int(order[i]) for i in row] for row in rows]


def packed_batch(task: Task, split: str, rows: list[list[int]], size: int, max_segments: int) -> Arrays:
    """One batch of ``size`` packed rows (missing rows are padding with ``mask`` False).

    Returns ``inputs (B, L)`` int32, ``segment_ids (B, L)`` int32 (1..S, 0 = padding), ``labels (B, S)``
    int32 for classification (-1 = no segment) or ``(B, L)`` for per-position labels, ``lengths (B,)``
    (the used length of each row) and ``mask (B,)``.
    """
    L = task.seq_len
    inputs = np.zeros((size, L), np.int32)
    segment_ids = np.zeros((size, L), np.int32)
    per_position = task.per_position
    labels = np.full((size, L) if per_position else (size, max_segments), IGNORE_INDEX, np.int32)
    used = np.zeros(size, np.int32)
    for r, row in enumerate(rows):
        pos = 0
        for s, i in enumerate(row):
            example = task.examples(split, [i])
            n = int(example["lengths"][0])
            inputs[r, pos : pos + n] = example["inputs"][0, :n]
            segment_ids[r, pos : pos + n] = s + 1
            if per_position:
                labels[r, pos : pos + n] = example["labels"][0, :n]
            else:
                labels[r, s] = example["labels"][0]
            pos += n
        used[r] = pos
    return {
        "inputs": inputs,
        "segment_ids": segment_ids,
        "labels": labels,
        "lengths": np.maximum(used, 1),
        "mask": np.arange(size) < len(rows),
    }


def packed_batches(
    task: Task,
    split: str,
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    start_step: int = 0,
    shard: tuple[int, int] = (0, 1),
    max_segments: int | None = None,
):
    """Yield packed batches (``packed_batch``) of one epoch; sharding as ``Task.batches``.

    Every step yields ``batch_size // shard[1]`` rows to each shard: shard ``i`` gets rows
    ``[i * B/count, (i+1) * B/count)`` of every global batch of rows.
    """
    check_packable(task)
    index, count = _check_shard(shard)
    _check_batch_size(batch_size, count)
    check_int("start_step", start_step, minimum=0)
    max_segments = default_max_segments(task, split) if max_segments is None else max_segments
    rows = pack_rows(task, split, seed=seed, epoch=epoch, max_segments=max_segments)
    steps = len(rows) // batch_size
    if steps == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {len(rows)} packed rows of split {split!r}")
    if start_step > steps:
        raise ValueError(f"start_step={start_step} exceeds the {steps} packed steps of split {split!r}")
    per = batch_size // count
    for step in range(start_step, steps):
        lo = step * batch_size + index * per
        yield packed_batch(task, split, rows[lo : lo + per], per, max_segments)


def padding_fraction(task: Task, split: str = "train", *, max_segments: int | None = None, seed: int = 0) -> dict:
    """Fraction of padding positions in ``split``, padded one example per row vs first-fit packed."""
    lengths = task.split_arrays(split)["lengths"].astype(np.int64)
    max_segments = default_max_segments(task, split) if max_segments is None else max_segments
    rows = pack_rows(task, split, seed=seed, epoch=0, max_segments=max_segments)
    tokens = int(lengths.sum())
    return {
        "tokens": tokens,
        "padded_rows": len(lengths),
        "packed_rows": len(rows),
        "padding_fraction_padded": 1.0 - tokens / (len(lengths) * task.seq_len),
        "padding_fraction_packed": 1.0 - tokens / (len(rows) * task.seq_len),
    }
