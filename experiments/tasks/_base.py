"""The task interface: fixed splits of examples served as deterministic, resumable, shardable batches.

Shape legend: B batch, L length (time), F input features (``input_dim``), N examples in a split.

Every task holds, per split, numpy arrays with a leading example axis N:

  inputs   (N, L) token ids (padding id 0)      or (N, L, F) real features (stored compactly, e.g.
           uint8 pixels, and converted per batch)
  labels   (N,) class ids  |  (N, L) per-position class ids with ignore index -1  |  (N,) float targets
  lengths  (N,) number of non-padding positions
  inputs2, lengths2 (retrieval only): the second document.
  dt       (N, L) float (irregularly sampled tasks only): the time before each sample, in grid steps (> 0;
           all ones is a regular grid); the trainer passes it to the model as ``dt``.

Batching rules (``Task.batches``):
  * ``batch_size`` is the GLOBAL batch; shard ``(index, count)`` gets rows
    ``[index * B/count, (index+1) * B/count)`` of every global batch, so shards are disjoint, cover the
    batch, and every shard runs the same number of steps. ``batch_size % count`` must be 0.
  * train: a fresh permutation per epoch from ``np.random.default_rng((seed, epoch))``; the last
    incomplete batch is dropped; ``start_step`` slices the permutation, so resuming replays nothing.
  * val / test: examples in file order (``seed`` unused), all examples kept; the last batch is padded to
    full size with rows whose ``mask`` is False (inputs 0, labels -1 / 0.0, lengths 0, dt 1). Every batch, train
    included, carries ``mask`` (B,) bool.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from algornn.scan_kernels._common.validate import check_choice, check_int

SPLITS = ("train", "val", "test")
IGNORE_INDEX = -1
KINDS = ("classification", "sequence_labels", "regression")

Arrays = dict[str, np.ndarray]


@dataclasses.dataclass(eq=False)
class Task:
    """A long-range task: metadata plus lazily built splits.

    Attributes:
      name: registry name.
      num_classes: classes per label (regression: 1, the output dimension).
      seq_len: L, the length of every batch's time axis.
      vocab_size: token tasks: ids are in ``[0, vocab_size)``, 0 = padding; None for real-valued tasks.
      input_dim: real-valued tasks: F; None for token tasks.
      kind: "classification" (labels (B,)), "sequence_labels" (labels (B, L), -1 = not scored) or
        "regression" (labels (B,) float32, mean squared error).
      per_position: True iff kind == "sequence_labels".
      pair: True when each example has two documents (retrieval): ``inputs2``, ``lengths2``.
      chance: accuracy of a uniform random guess (classification; per scored position for sequence
        labels), or the MSE of the best constant answer (regression).
      options: the resolved options the task was built with.
    """

    name: str
    num_classes: int
    seq_len: int
    load_split: Callable[[str], Arrays] = dataclasses.field(repr=False)
    vocab_size: int | None = None
    input_dim: int | None = None
    kind: str = "classification"
    pair: bool = False
    chance: float | None = None
    options: Mapping[str, object] = dataclasses.field(default_factory=dict, repr=False)
    convert: Callable[[Arrays], Arrays] | None = dataclasses.field(default=None, repr=False)
    description: str = dataclasses.field(default="", repr=False)
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        check_choice("kind", self.kind, KINDS)
        if (self.vocab_size is None) == (self.input_dim is None):
            raise ValueError("exactly one of vocab_size (token task) and input_dim (real task) must be set")

    @property
    def per_position(self) -> bool:
        return self.kind == "sequence_labels"

    # ------------------------------------------------------------------ data access
    def split_arrays(self, split: str) -> Arrays:
        """All stored arrays of ``split`` (built or read on first use, then kept in memory)."""
        _check_split(split)
        if split not in self._cache:
            arrays = self.load_split(split)
            _check_arrays(arrays, split, self.name)
            self._cache[split] = arrays
        return self._cache[split]

    def num_examples(self, split: str) -> int:
        return int(self.split_arrays(split)["labels"].shape[0])

    def steps_per_epoch(self, split: str, batch_size: int) -> int:
        """Train: floor(N / B) (last partial batch dropped); val/test: ceil(N / B) (padded)."""
        _check_batch_size(batch_size, 1)
        n = self.num_examples(split)
        return n // batch_size if split == "train" else math.ceil(n / batch_size)

    def examples(self, split: str, indices) -> Arrays:
        """Converted examples at ``indices`` (for inspection and plotting)."""
        arrays = self.split_arrays(split)
        rows = {k: v[np.asarray(indices)] for k, v in arrays.items()}
        return self._finish(rows, np.ones(len(rows["labels"]), bool))

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        seed: int,
        epoch: int = 0,
        start_step: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[Arrays]:
        """Yield numpy batches ``{"inputs", "labels", "lengths", "mask"}`` (+ ``inputs2``, ``lengths2``).

        Each batch has ``batch_size // shard[1]`` rows. See the module docstring for ordering, padding and
        sharding rules. Resuming from ``(epoch, start_step)`` yields exactly the batches an uninterrupted
        run would have yielded from that point.
        """
        index, count = _check_shard(shard)
        _check_batch_size(batch_size, count)
        for label, value in (("seed", seed), ("epoch", epoch), ("start_step", start_step)):
            check_int(label, value, minimum=0)
        arrays = self.split_arrays(split)
        n = int(arrays["labels"].shape[0])
        steps = self.steps_per_epoch(split, batch_size)
        if steps == 0:
            raise ValueError(f"batch_size={batch_size} exceeds the {n} examples of split {split!r}")
        if start_step > steps:
            raise ValueError(f"start_step={start_step} exceeds the {steps} steps of split {split!r}")
        if split == "train":
            order = np.random.default_rng((int(seed), int(epoch))).permutation(n)
        else:
            order = np.arange(n)
        per = batch_size // count
        for step in range(start_step, steps):
            lo = step * batch_size + index * per
            rows = order[lo : min(lo + per, n)] if lo < n else order[:0]
            yield self._batch(arrays, rows, per)

    # ------------------------------------------------------------------ internals
    def _batch(self, arrays: Arrays, rows: np.ndarray, size: int) -> Arrays:
        real = len(rows)
        out = {}
        for key, value in arrays.items():
            taken = value[rows]
            if real < size:  # eval tail: pad with masked rows
                fill = IGNORE_INDEX if key == "labels" and value.dtype.kind == "i" else 1 if key == "dt" else 0
                pad = np.full((size - real,) + value.shape[1:], fill, value.dtype)
                taken = np.concatenate([taken, pad], axis=0)
            out[key] = taken
        mask = np.arange(size) < real
        return self._finish(out, mask)

    def _finish(self, rows: Arrays, mask: np.ndarray) -> Arrays:
        if self.convert is not None:
            rows = self.convert(rows)
        out = {}
        for key, value in rows.items():
            if key in ("inputs", "inputs2"):
                value = value.astype(np.int32) if self.vocab_size is not None else value.astype(np.float32)
            elif key in ("lengths", "lengths2"):
                value = value.astype(np.int32)
            elif key == "labels":
                value = value.astype(np.float32 if self.kind == "regression" else np.int32)
            elif key == "dt":
                value = value.astype(np.float32)
            out[key] = value
        out["mask"] = mask
        return out


# ---------------------------------------------------------------------- validation helpers
def _check_split(split):
    check_choice("split", split, SPLITS)


def _check_shard(shard):
    try:
        index, count = (int(s) for s in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be a pair (index, count), got {shard!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must satisfy 0 <= index < count, got {shard!r}")
    return index, count


def _check_batch_size(batch_size, count):
    check_int("batch_size", batch_size)
    if batch_size % count:
        raise ValueError(f"batch_size={batch_size} must be divisible by the shard count {count}")


def _check_arrays(arrays: Arrays, split: str, name: str):
    for key in ("inputs", "labels", "lengths"):
        if key not in arrays:
            raise ValueError(f"task {name!r} split {split!r}: missing array {key!r}")
    n = arrays["labels"].shape[0]
    for key, value in arrays.items():
        if value.shape[0] != n:
            raise ValueError(f"task {name!r} split {split!r}: {key} has {value.shape[0]} rows, labels {n}")


def pad_tokens(sequences: list[np.ndarray], seq_len: int, dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad (and truncate) token sequences to ``seq_len`` with id 0. Returns ((N, L), lengths (N,))."""
    out = np.zeros((len(sequences), seq_len), dtype)
    lengths = np.zeros(len(sequences), np.int32)
    for i, seq in enumerate(sequences):
        n = min(len(seq), seq_len)
        out[i, :n] = seq[:n]
        lengths[i] = n
    return out, lengths


def compact_int_dtype(max_value: int):
    """The smallest unsigned dtype holding ids up to ``max_value`` (storage only; batches are int32)."""
    return np.uint8 if max_value < 256 else np.uint16 if max_value < 65536 else np.int32


def pixel_converter(tokens: bool) -> Callable[[Arrays], Arrays]:
    """Batch conversion for uint8 pixel tasks.

    tokens=False: inputs (B, L) or (B, L, F) uint8 -> (B, L, F) float32 in [-1, 1] (x / 127.5 - 1).
    tokens=True:  inputs (B, L) uint8 -> int32 ids pixel + 1 (vocab 257; 0 stays the padding id).
    """

    def convert(rows: Arrays) -> Arrays:
        x = rows["inputs"]
        if tokens:
            x = x.astype(np.int32) + 1
        else:
            x = x.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
            x = x[..., None] if x.ndim == 2 else x
        return dict(rows, inputs=x)

    return convert
