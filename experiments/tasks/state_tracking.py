"""State-tracking tasks with length generalisation: parity and modular arithmetic without brackets.

Shape legend: N examples, L length (the padded width of a split), n the real length of a row.

Protocol of Delétang et al. 2023 ("Neural Networks and the Chomsky Hierarchy", regular tasks "parity
check" and "modular arithmetic (simple)"), as used by Grazzi et al. 2025 ("Unlocking State-Tracking in
Linear RNNs Through Negative Eigenvalues", §5.2): train on short rows, test on longer ones. Row lengths
are uniform in ``[min_len, max_len]`` for train and val and in ``[test_min_len, test_max_len]`` for test;
each split is right-padded with id 0 to its own maximum (train/val width ``max_len``, test width
``test_max_len``; ``Task.seq_len`` is the train width). The label is per position and scored only at the
last real token (position n - 1); every other position, padding included, is -1. Scaled for CPU: the
papers sample fresh rows each step; here fixed splits of ``n_train`` / ``n_val`` / ``n_test`` rows.

  parity              bits, ids 1 (bit 0) and 2 (bit 1); label = number of ones mod 2. Chance 0.5.
  modular_arithmetic  ``d_0 o_1 d_1 ... o_k d_k`` with digits d in [0, modulus) (id 1 + d) and operators
                      + - * (ids modulus + 1, + 2, + 3); label = the value mod ``modulus`` with the usual
                      precedence, * before + and - (as Delétang et al.'s evaluator: "1 + 2 * 3 = 2" mod 5).
                      Rows have odd length (numbers and operators alternate): the length is drawn uniformly
                      from the odd lengths in the range. Chance 1 / modulus.
"""

from __future__ import annotations

import zlib

import numpy as np

from algornn.experiments.tasks._base import IGNORE_INDEX, SPLITS, Task
from algornn.experiments.tasks._registry import register
from algornn.scan_kernels._common.validate import check_int

OPERATORS = ("+", "-", "*")


def _lengths(rng, n, lo, hi, *, odd=False):
    """(N,) row lengths uniform in [lo, hi] (only the odd ones when ``odd``)."""
    if odd:
        first = lo + 1 - lo % 2  # the smallest odd length >= lo
        return first + 2 * rng.integers(0, (hi - first) // 2 + 1, n)
    return rng.integers(lo, hi + 1, n)


def _last_token_labels(lengths, width, answers):
    labels = np.full((lengths.size, width), IGNORE_INDEX, np.int8)
    labels[np.arange(lengths.size), lengths - 1] = answers
    return labels


def generate_parity(n, rng, *, lo, hi):
    """Parity arrays: inputs (N, hi) uint8 (ids 1/2, padding 0), labels (N, hi) int8, lengths (N,)."""
    lengths = _lengths(rng, n, lo, hi)
    bits = rng.integers(0, 2, (n, hi))
    real = np.arange(hi)[None, :] < lengths[:, None]
    bits = np.where(real, bits, 0)
    inputs = np.where(real, bits + 1, 0).astype(np.uint8)
    answers = bits.sum(axis=1) % 2
    return {"inputs": inputs, "labels": _last_token_labels(lengths, hi, answers), "lengths": lengths.astype(np.int32)}


def generate_modular_arithmetic(n, rng, *, lo, hi, modulus=5):
    """Modular-arithmetic arrays: inputs (N, hi) uint8, labels (N, hi) int8, lengths (N,) odd.

    The answer is computed by a left-to-right automaton that keeps (sum of finished terms, current
    signed product term), which is the precedence rule * before + and -.
    """
    lengths = _lengths(rng, n, lo, hi, odd=True)
    n_digits = hi // 2 + 1
    digits = rng.integers(0, modulus, (n, n_digits))
    ops = rng.integers(0, len(OPERATORS), (n, n_digits - 1))  # index into OPERATORS
    total = np.zeros(n, np.int64)
    term = digits[:, 0].copy()
    for i in range(1, n_digits):
        live = 2 * i < lengths  # digit i exists in the row
        d, op = digits[:, i], ops[:, i - 1]
        new_total = np.where(op == 2, total, (total + term) % modulus)
        new_term = np.where(op == 0, d, np.where(op == 1, (modulus - d) % modulus, (term * d) % modulus))
        total = np.where(live, new_total, total)
        term = np.where(live, new_term, term)
    answers = (total + term) % modulus
    inputs = np.zeros((n, hi), np.uint8)
    inputs[:, 0::2] = (digits[:, : (hi + 1) // 2] + 1).astype(np.uint8)
    inputs[:, 1::2] = (ops[:, : hi // 2] + modulus + 1).astype(np.uint8)
    inputs[np.arange(hi)[None, :] >= lengths[:, None]] = 0
    return {"inputs": inputs, "labels": _last_token_labels(lengths, hi, answers), "lengths": lengths.astype(np.int32)}


def _check_ranges(min_len, max_len, test_min_len, test_max_len, *, odd):
    check_int("min_len", min_len, minimum=1)
    check_int("max_len", max_len, minimum=min_len, maximum=4096)
    check_int("test_min_len", test_min_len, minimum=1)
    check_int("test_max_len", test_max_len, minimum=test_min_len, maximum=4096)
    if odd:
        for lo_name, lo, hi_name, hi in (
            ("min_len", min_len, "max_len", max_len),
            ("test_min_len", test_min_len, "test_max_len", test_max_len),
        ):
            if lo == hi and lo % 2 == 0:
                raise ValueError(
                    f"{lo_name}={lo}, {hi_name}={hi}: modular_arithmetic rows have odd length "
                    "(numbers and operators alternate); the range must contain an odd length"
                )


def _state_task(name, generate, *, num_classes, vocab_size, ranges, counts, data_seed, options):
    check_int("data_seed", data_seed, minimum=0)
    counts = {
        "train": check_int("n_train", counts[0], minimum=1),
        "val": check_int("n_val", counts[1], minimum=1),
        "test": check_int("n_test", counts[2], minimum=1),
    }
    stream = zlib.crc32(name.encode())

    def load(split):
        lo, hi = ranges["test" if split == "test" else "train"]
        rng = np.random.default_rng((data_seed, stream, SPLITS.index(split)))
        return generate(counts[split], rng, lo=lo, hi=hi)

    return Task(
        name=name,
        num_classes=num_classes,
        seq_len=ranges["train"][1],
        vocab_size=vocab_size,
        kind="sequence_labels",
        chance=1.0 / num_classes,
        options=options,
        description=__doc__,
        load_split=load,
    )


@register("parity")
def parity(
    *,
    min_len=3,
    max_len=40,
    test_min_len=40,
    test_max_len=256,
    n_train=10000,
    n_val=1000,
    n_test=1000,
    data_seed=0,
):
    """Parity of a bit string (Delétang et al. 2023 "parity check"; Grazzi et al. 2025 §5.2)."""
    _check_ranges(min_len, max_len, test_min_len, test_max_len, odd=False)
    options = dict(min_len=min_len, max_len=max_len, test_min_len=test_min_len, test_max_len=test_max_len)
    options.update(n_train=n_train, n_val=n_val, n_test=n_test, data_seed=data_seed)
    return _state_task(
        "parity",
        generate_parity,
        num_classes=2,
        vocab_size=3,
        ranges={"train": (min_len, max_len), "test": (test_min_len, test_max_len)},
        counts=(n_train, n_val, n_test),
        data_seed=data_seed,
        options=options,
    )


@register("modular_arithmetic")
def modular_arithmetic(
    *,
    modulus=5,
    min_len=3,
    max_len=40,
    test_min_len=40,
    test_max_len=256,
    n_train=10000,
    n_val=1000,
    n_test=1000,
    data_seed=0,
):
    """Modular arithmetic without brackets (Delétang et al. 2023 "modular arithmetic (simple)", mod 5;
    Grazzi et al. 2025 §5.2)."""
    check_int("modulus", modulus, minimum=2, maximum=100)
    _check_ranges(min_len, max_len, test_min_len, test_max_len, odd=True)
    options = dict(modulus=modulus, min_len=min_len, max_len=max_len, test_min_len=test_min_len)
    options.update(test_max_len=test_max_len, n_train=n_train, n_val=n_val, n_test=n_test, data_seed=data_seed)

    def generate(n, rng, *, lo, hi):
        return generate_modular_arithmetic(n, rng, lo=lo, hi=hi, modulus=modulus)

    return _state_task(
        "modular_arithmetic",
        generate,
        num_classes=modulus,
        vocab_size=modulus + 1 + len(OPERATORS),
        ranges={"train": (min_len, max_len), "test": (test_min_len, test_max_len)},
        counts=(n_train, n_val, n_test),
        data_seed=data_seed,
        options=options,
    )
