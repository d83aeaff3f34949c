"""Recall tasks of the capability suite: long-range presence and associative-retrieval capacity.

Shape legend: N examples, L length (``seq_len``).

  presence            random symbols; the label (2 classes, exactly balanced) says whether the marker symbol
                      (id 1) occurs in the first ``window`` positions. The marker may also occur later, as a
                      distractor that must not count. One label per sequence, read out at the last position
                      (``model.pooling="last"``); with ``query_token`` the last position is always the symbol
                      ``n_symbols + 1`` (a fixed query to read the answer at). Chance 0.5.
  retrieval_capacity  key-value pairs, then one query key; the label at the query is its value (Schlag, Irie &
                      Schmidhuber 2021, §6.1). Per-position labels, -1 except at the query (last position).
                      Chance 1 / n_values.

Generated from ``data_seed`` (one stream per task and split); every sequence fills L (no padding).
"""

from __future__ import annotations

import zlib

import numpy as np

from algornn.experiments.tasks._base import IGNORE_INDEX, SPLITS, Task, compact_int_dtype
from algornn.experiments.tasks._registry import register
from algornn.scan_kernels._common.validate import check_bool, check_int

MARKER = 1  # presence: the symbol whose occurrence in the window is asked about


def _rng(name: str, data_seed: int, split: str):
    return np.random.default_rng((data_seed, zlib.crc32(name.encode()), SPLITS.index(split)))


def _counts(n_train, n_val, n_test):
    return {
        "train": check_int("n_train", n_train, minimum=2),
        "val": check_int("n_val", n_val, minimum=2),
        "test": check_int("n_test", n_test, minimum=2),
    }


# ---------------------------------------------------------------------- presence
def generate_presence(n, seq_len, rng, *, window=10, n_symbols=16, distractors=False, query_token=False):
    """Presence arrays: inputs (N, L) uint8 ids in ``[1, n_symbols]``, labels (N,) int8 in {0, 1}.

    Exactly ``n // 2`` rows are positive (in random order). A negative row draws its window from the
    symbols other than the marker; a positive row draws its window from all symbols and then sets one
    uniformly chosen window position to the marker. Positions from ``window`` on are uniform over the
    symbols other than the marker, or over all symbols with ``distractors`` (then a late marker must be
    told apart from an early one by its position). ``query_token``: the last position is then the id
    ``n_symbols + 1`` in every row (drawn after the rest, so the other positions are the same as without it).
    """
    labels = np.zeros(n, np.int8)
    labels[: n // 2] = 1
    labels = labels[rng.permutation(n)]
    low = 1 if distractors else MARKER + 1
    inputs = rng.integers(low, n_symbols + 1, (n, seq_len)).astype(compact_int_dtype(n_symbols))
    head = rng.integers(MARKER + 1, n_symbols + 1, (n, window))  # window without the marker
    inputs[:, :window] = np.where(labels[:, None] == 1, inputs[:, :window], head)
    positive = np.flatnonzero(labels == 1)
    inputs[positive, rng.integers(0, window, positive.size)] = MARKER
    if query_token:
        inputs[:, -1] = n_symbols + 1
    return {"inputs": inputs, "labels": labels, "lengths": np.full(n, seq_len, np.int32)}


@register("presence")
def presence(
    *,
    seq_len=512,
    window=10,
    n_symbols=16,
    distractors=False,
    query_token=False,
    n_train=10000,
    n_val=1000,
    n_test=1000,
    data_seed=0,
):
    """Long-range presence (issue 16's probe): did the marker appear in the first ``window`` tokens?

    Not from a paper: the simplest long-memory probe, one bit to hold for ``seq_len - window`` steps.
    By default the marker occurs only inside the window (a pure memory task, as the issue's probe);
    ``distractors=True`` also draws it after the window, so the answer depends on where it occurred.
    ``query_token=True`` ends every row with the same query symbol ``n_symbols + 1`` (the answer is read out
    where the input is fixed, not at a random symbol; the window must then end before the last position).
    Vocabulary: 0 padding (unused), ids 1..n_symbols with 1 the marker (and n_symbols + 1 the query).
    """
    check_bool("query_token", query_token)
    check_int("n_symbols", n_symbols, minimum=2, maximum=255 - int(query_token))  # ids fit one byte
    check_int("seq_len", seq_len, minimum=2)
    check_int("window", window, minimum=1, maximum=seq_len - int(query_token))
    check_bool("distractors", distractors)
    counts = _counts(n_train, n_val, n_test)
    check_int("data_seed", data_seed, minimum=0)
    options = dict(seq_len=seq_len, window=window, n_symbols=n_symbols, distractors=distractors)
    if query_token:  # only when set: the options (and cache keys) of the runs without it stay as they were
        options["query_token"] = True
    options.update(n_train=n_train, n_val=n_val, n_test=n_test)
    options["data_seed"] = data_seed

    def load(split):
        rng = _rng("presence", data_seed, split)
        return generate_presence(
            counts[split],
            seq_len,
            rng,
            window=window,
            n_symbols=n_symbols,
            distractors=distractors,
            query_token=query_token,
        )

    return Task(
        name="presence",
        num_classes=2,
        seq_len=seq_len,
        vocab_size=n_symbols + 1 + int(query_token),
        kind="classification",
        chance=0.5,
        options=options,
        description=__doc__,
        load_split=load,
    )


# ---------------------------------------------------------------------- retrieval capacity
def generate_retrieval_capacity(n, rng, *, n_keys=20, setting=1, n_values=20):
    """Retrieval-capacity arrays: inputs (N, L) with L = 2 M + 1, labels (N, L) int16 (-1 but the last).

    Keys are ids ``1 .. n_keys``, values ``n_keys + 1 .. n_keys + n_values`` (class = id - n_keys - 1).
    The row is ``k_1 v_1 ... k_M v_M q``. Setting 1: M = n_keys, the keys a random permutation of all
    ``n_keys`` keys (each stored once), q uniform over them. Setting 2: M = 2 n_keys, keys drawn with
    replacement from the ``n_keys`` keys, q the key of a uniformly chosen item; the label is the value of
    q's LAST occurrence (a repeated key overwrites its value). Values are uniform with replacement.
    """
    items = n_keys if setting == 1 else 2 * n_keys
    seq_len = 2 * items + 1
    if setting == 1:
        keys = np.argsort(rng.random((n, n_keys)), axis=1)
    else:
        keys = rng.integers(0, n_keys, (n, items))
    values = rng.integers(0, n_values, (n, items))
    query = keys[np.arange(n), rng.integers(0, items, n)]  # (N,): a key that occurs in the row
    # the latest item holding the query key: the highest index where keys == query
    hits = keys == query[:, None]
    latest = items - 1 - np.argmax(hits[:, ::-1], axis=1)
    answer = values[np.arange(n), latest]
    inputs = np.zeros((n, seq_len), compact_int_dtype(n_keys + n_values))
    inputs[:, 0 : 2 * items : 2] = keys + 1
    inputs[:, 1 : 2 * items : 2] = values + 1 + n_keys
    inputs[:, -1] = query + 1
    labels = np.full((n, seq_len), IGNORE_INDEX, np.int16)
    labels[:, -1] = answer
    return {"inputs": inputs, "labels": labels, "lengths": np.full(n, seq_len, np.int32)}


@register("retrieval_capacity")
def retrieval_capacity(*, n_keys=20, setting=1, n_values=None, n_train=10000, n_val=1000, n_test=1000, data_seed=0):
    """Associative-retrieval capacity, Schlag, Irie & Schmidhuber 2021 ("Linear Transformers Are Secretly
    Fast Weight Programmers"), §6.1.

    Setting 1 (capacity): S = ``n_keys`` unique keys, each with a random value, then one query key; the
    answer is its value. Setting 2 (updates): 2S items whose keys are drawn from the S keys, so keys
    repeat and the latest value of a key is the one to return (only an overwriting update such as the
    delta rule can do this within a fixed-size state). Scaling/encoding: the paper feeds each (key,
    value) pair as one input step and reads the answer out of the query step; here key and value are two
    consecutive tokens (L = 2S + 1, resp. 4S + 1) and the answer is a per-position label at the last
    token. ``n_values`` (default: ``n_keys``) sets how many values there are (chance 1 / n_values).
    """
    check_int("setting", setting, minimum=1, maximum=2)
    check_int("n_keys", n_keys, minimum=2, maximum=30000)
    n_values = check_int("n_values", n_keys if n_values is None else n_values, minimum=2, maximum=30000)
    counts = _counts(n_train, n_val, n_test)
    check_int("data_seed", data_seed, minimum=0)
    seq_len = 2 * (n_keys if setting == 1 else 2 * n_keys) + 1
    options = dict(n_keys=n_keys, setting=setting, n_values=n_values, n_train=n_train, n_val=n_val)
    options.update(n_test=n_test, data_seed=data_seed)

    def load(split):
        rng = _rng("retrieval_capacity", data_seed, split)
        return generate_retrieval_capacity(counts[split], rng, n_keys=n_keys, setting=setting, n_values=n_values)

    return Task(
        name="retrieval_capacity",
        num_classes=n_values,
        seq_len=seq_len,
        vocab_size=1 + n_keys + n_values,
        kind="sequence_labels",
        chance=1.0 / n_values,
        options=options,
        description=__doc__,
        load_split=load,
    )
