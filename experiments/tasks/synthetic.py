"""Synthetic memory tasks, generated (vectorised numpy) from a seed, parameterised by length and difficulty.

Shape legend: N examples, L length (``seq_len``).

Token layout shared by the token tasks: id 0 = padding (never emitted: every sequence fills L), id 1 =
blank / noise, id 2 = delimiter or trigger, ids from 3 = the symbols (class id = token id - 3), except
``mqar`` (keys from 2, values after the keys). Per-position tasks label unscored positions -1.

  copying            prefix of ``n_copy`` symbols, a blank gap, a delimiter, then ``n_copy`` blanks whose
                     labels are the prefix (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016 §4.1).
                     Chance: 1 / n_symbols per scored position.
  adding             real inputs (value ~ U[0, 1), marker); exactly two markers, one in each half; the
                     target is the sum of the two marked values (Hochreiter & Schmidhuber 1997, exp. 4).
                     Regression; chance = MSE of always answering 1: Var(U + U) = 1/6.
  selective_copying  ``n_copy`` symbols at random positions among noise, a delimiter, then ``n_copy``
                     scored blanks whose labels are the symbols in order (Jing et al. 2019; Gu & Dao 2023
                     §3.1). Chance: 1 / n_symbols. Mamba's setting (§4.1, App. E.1: L = 4096, 16 tokens to
                     memorise, vocabulary 16 counting the noise token) is ``seq_len=4096, n_copy=16,
                     n_symbols=16``; here noise and delimiter are ids of their own beside the 16 symbols
                     (``n_symbols=14`` keeps the total at 16 with them).
  mqar               ``n_pairs`` key-value pairs, then ``n_queries`` earlier keys among filler tokens; the
                     label at a query is its value (Arora et al. 2023, Zoology §3). ``placement``,
                     ``filler``, ``distinct_values`` select Zoology's exact layout (see ``mqar``).
                     Chance: 1 / n_values blind; 1 / n_pairs for a model that knows which values occurred.
  induction          random symbols containing one trigger followed by a target symbol; the last token is
                     the trigger again and its label is the target (Olsson et al. 2022; Fu et al. 2023,
                     H3 §3.1; Mamba §4.1: vocabulary 16, trained at L = 256, tested at 64 ... 2^20). The
                     vocabulary does not depend on ``seq_len``, so a checkpoint trained at one length is
                     evaluated at another with ``task_options={"seq_len": L}``. Chance: 1 / n_symbols.
"""

from __future__ import annotations

import zlib

import numpy as np

from algornn.experiments.tasks._base import IGNORE_INDEX, SPLITS, Task, compact_int_dtype
from algornn.experiments.tasks._registry import register
from algornn.scan_kernels._common.validate import check_bool, check_choice, check_int

BLANK, DELIM, FIRST_SYMBOL = 1, 2, 3


def _random_positions(rng, n, span, k):
    """(n, k) sorted distinct positions in [0, span) per row."""
    return np.sort(np.argsort(rng.random((n, span)), axis=1)[:, :k], axis=1)


def _distinct(rng, n, population, k):
    """(n, k) distinct draws from ``[0, population)`` per row, in random order.

    Small populations (<= 1024) and large k (k² > population, where repeats are likely) take the first k
    of a random permutation (the stream existing datasets were generated with); otherwise (Zoology's 4096
    keys) the rows that hold a repeat are redrawn, which costs O(n k) memory instead of O(n population).
    """
    if population <= 1024 or k * k > population:
        return np.argsort(rng.random((n, population)), axis=1)[:, :k]
    out = rng.integers(0, population, (n, k))
    while True:
        ordered = np.sort(out, axis=1)
        bad = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if bad.size == 0:
            return out
        out[bad] = rng.integers(0, population, (bad.size, k))


def _scored(n, seq_len, positions, values):
    labels = np.full((n, seq_len), IGNORE_INDEX, np.int16)
    np.put_along_axis(labels, positions, values.astype(np.int16), axis=1)
    return labels


def _full_lengths(n, seq_len):
    return np.full(n, seq_len, np.int32)


def generate_copying(n, seq_len, rng, *, n_copy=10, n_symbols=8):
    """Copying task arrays: inputs (N, L) uint8, labels (N, L) int16 (-1 except the last ``n_copy``)."""
    symbols = rng.integers(0, n_symbols, (n, n_copy))
    inputs = np.full((n, seq_len), BLANK, compact_int_dtype(n_symbols + 2))
    inputs[:, :n_copy] = symbols + FIRST_SYMBOL
    inputs[:, seq_len - n_copy - 1] = DELIM
    out_pos = np.broadcast_to(np.arange(seq_len - n_copy, seq_len)[None], (n, n_copy))
    return {"inputs": inputs, "labels": _scored(n, seq_len, out_pos, symbols), "lengths": _full_lengths(n, seq_len)}


def generate_adding(n, seq_len, rng):
    """Adding problem arrays: inputs (N, L, 2) float32 (value, marker), labels (N,) float32 sums."""
    values = rng.random((n, seq_len), dtype=np.float32)
    half = seq_len // 2
    first = rng.integers(0, half, n)
    second = rng.integers(half, seq_len, n)
    markers = np.zeros((n, seq_len), np.float32)
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    labels = values[rows, first] + values[rows, second]
    return {"inputs": np.stack([values, markers], axis=-1), "labels": labels, "lengths": _full_lengths(n, seq_len)}


def generate_selective_copying(n, seq_len, rng, *, n_copy=16, n_symbols=8):
    """Selective copying arrays: inputs (N, L) uint8, labels (N, L) int16 (scored: the last ``n_copy``)."""
    region = seq_len - n_copy - 1
    symbols = rng.integers(0, n_symbols, (n, n_copy))
    inputs = np.full((n, seq_len), BLANK, compact_int_dtype(n_symbols + 2))
    where = _random_positions(rng, n, region, n_copy)
    np.put_along_axis(inputs, where, (symbols + FIRST_SYMBOL).astype(inputs.dtype), axis=1)
    inputs[:, region] = DELIM
    out_pos = np.broadcast_to(np.arange(seq_len - n_copy, seq_len)[None], (n, n_copy))
    return {"inputs": inputs, "labels": _scored(n, seq_len, out_pos, symbols), "lengths": _full_lengths(n, seq_len)}


def generate_mqar(
    n,
    seq_len,
    rng,
    *,
    n_pairs=8,
    n_queries=None,
    n_keys=64,
    n_values=64,
    placement="uniform",
    filler="blank",
    distinct_values=False,
    power_a=0.01,
):
    """MQAR arrays. Keys are ids ``2 .. 1+n_keys``, values ``2+n_keys .. 1+n_keys+n_values``.

    inputs (N, L): ``k_1 v_1 ... k_P v_P`` then the queried keys among filler tokens;
    labels (N, L) int16: value class (value id - 2 - n_keys) at each query, -1 elsewhere.

    placement="uniform": ``n_queries`` distinct pairs, queried at uniformly random positions after the
    context. placement="zoology" (Arora et al. 2023, Zoology's ``multiquery_ar``): the first ``n_queries``
    pairs are queried, pair j at offset ``2 g_j`` after the context, the gaps g drawn without replacement
    from ``[0, (L - 2P) // 2)`` with P(g) ∝ (g + 1)^(power_a - 1) (most queries close to the context) in
    sampling order (Gumbel top-k draws exactly that sequence). filler="blank": every other position is the
    blank id 1; filler="random": a uniform id from ``[1, vocab)`` (Zoology's ``random_non_queries``; a filler
    may be a key or value id, it is never scored). distinct_values: values of a row are distinct (Zoology).
    """
    n_queries = n_pairs if n_queries is None else n_queries
    keys = _distinct(rng, n, n_keys, n_pairs)  # distinct keys per row
    if distinct_values:
        values = _distinct(rng, n, n_values, n_pairs)
    else:
        values = rng.integers(0, n_values, (n, n_pairs))
    vocab = 2 + n_keys + n_values
    inputs = np.full((n, seq_len), BLANK, compact_int_dtype(vocab - 1))
    if filler == "random":
        inputs[:] = rng.integers(1, vocab, (n, seq_len))
    inputs[:, 0 : 2 * n_pairs : 2] = keys + 2
    inputs[:, 1 : 2 * n_pairs : 2] = values + 2 + n_keys
    if placement == "zoology":
        space = (seq_len - 2 * n_pairs) // 2
        log_p = (power_a - 1.0) * np.log(np.arange(1, space + 1))
        score = log_p[None, :] + rng.gumbel(size=(n, space))
        gaps = np.argsort(-score, axis=1)[:, :n_queries]  # sequential sampling without replacement
        which = np.broadcast_to(np.arange(n_queries)[None], (n, n_queries))
        where = 2 * n_pairs + 2 * gaps
    else:
        which = np.argsort(rng.random((n, n_pairs)), axis=1)[:, :n_queries]  # distinct pairs queried
        where = 2 * n_pairs + _random_positions(rng, n, seq_len - 2 * n_pairs, n_queries)
    np.put_along_axis(inputs, where, (np.take_along_axis(keys, which, 1) + 2).astype(inputs.dtype), axis=1)
    labels = _scored(n, seq_len, where, np.take_along_axis(values, which, 1))
    return {"inputs": inputs, "labels": labels, "lengths": _full_lengths(n, seq_len)}


def generate_induction(n, seq_len, rng, *, n_symbols=16):
    """Induction-head arrays: inputs (N, L) uint8, labels (N, L) int16 scored at the last position only."""
    inputs = (rng.integers(0, n_symbols, (n, seq_len)) + FIRST_SYMBOL).astype(compact_int_dtype(n_symbols + 2))
    rows = np.arange(n)
    trigger = rng.integers(0, seq_len - 2, n)  # trigger at p, target at p + 1 <= L - 2
    inputs[rows, trigger] = DELIM
    inputs[:, -1] = DELIM
    target = inputs[rows, trigger + 1].astype(np.int64) - FIRST_SYMBOL
    last = np.full((n, 1), seq_len - 1)
    labels = _scored(n, seq_len, last, target[:, None])
    return {"inputs": inputs, "labels": labels, "lengths": _full_lengths(n, seq_len)}


# ---------------------------------------------------------------------- registered tasks
def _split_loader(name, generate, counts, data_seed, **kwargs):
    stream = zlib.crc32(name.encode())

    def load(split):
        rng = np.random.default_rng((data_seed, stream, SPLITS.index(split)))
        return generate(counts[split], kwargs["seq_len"], rng, **{k: v for k, v in kwargs.items() if k != "seq_len"})

    return load


def _counts(n_train, n_val, n_test):
    return {
        "train": check_int("n_train", n_train, minimum=1),
        "val": check_int("n_val", n_val, minimum=1),
        "test": check_int("n_test", n_test, minimum=1),
    }


def _token_task(name, generate, *, seq_len, n_train, n_val, n_test, data_seed, num_classes, vocab_size, chance, **kw):
    counts = _counts(n_train, n_val, n_test)
    check_int("data_seed", data_seed, minimum=0)
    options = dict(seq_len=seq_len, n_train=n_train, n_val=n_val, n_test=n_test, data_seed=data_seed, **kw)
    return Task(
        name=name,
        num_classes=num_classes,
        seq_len=seq_len,
        vocab_size=vocab_size,
        kind="sequence_labels",
        chance=chance,
        options=options,
        description=__doc__,
        load_split=_split_loader(name, generate, counts, data_seed, seq_len=seq_len, **kw),
    )


@register("copying")
def copying(*, seq_len=512, n_copy=10, n_symbols=8, n_train=10000, n_val=1000, n_test=1000, data_seed=0):
    check_int("n_copy", n_copy, minimum=1)
    check_int("n_symbols", n_symbols, minimum=2, maximum=250)
    check_int("seq_len", seq_len, minimum=2 * n_copy + 1)
    return _token_task(
        "copying",
        generate_copying,
        seq_len=seq_len,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        data_seed=data_seed,
        num_classes=n_symbols,
        vocab_size=n_symbols + FIRST_SYMBOL,
        chance=1.0 / n_symbols,
        n_copy=n_copy,
        n_symbols=n_symbols,
    )


@register("selective_copying")
def selective_copying(*, seq_len=512, n_copy=16, n_symbols=8, n_train=10000, n_val=1000, n_test=1000, data_seed=0):
    check_int("n_copy", n_copy, minimum=1)
    check_int("n_symbols", n_symbols, minimum=2, maximum=250)
    check_int("seq_len", seq_len, minimum=3 * n_copy + 1)
    return _token_task(
        "selective_copying",
        generate_selective_copying,
        seq_len=seq_len,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        data_seed=data_seed,
        num_classes=n_symbols,
        vocab_size=n_symbols + FIRST_SYMBOL,
        chance=1.0 / n_symbols,
        n_copy=n_copy,
        n_symbols=n_symbols,
    )


@register("mqar")
def mqar(
    *,
    seq_len=256,
    n_pairs=8,
    n_queries=None,
    n_keys=64,
    n_values=64,
    placement="uniform",
    filler="blank",
    distinct_values=False,
    power_a=0.01,
    n_train=10000,
    n_val=1000,
    n_test=1000,
    data_seed=0,
):
    """Multi-query associative recall (Arora et al. 2023, Zoology §3; see ``generate_mqar``).

    The defaults are a small setting. Zoology's (Fig. 2): ``n_keys=4096, n_values=4096`` (its vocabulary
    of 8192 split into a key half and a value half; here plus the padding and blank ids),
    ``placement="zoology", filler="random", distinct_values=True``, ``n_pairs`` = ``n_queries`` in
    {4, 8, 16} at ``seq_len`` {64, 128, 256}. The loss is on the query positions only, as Zoology's labels.
    """
    check_int("n_pairs", n_pairs, minimum=1)
    check_int("n_keys", n_keys, minimum=n_pairs)
    check_int("n_values", n_values, minimum=2)
    check_choice("placement", placement, ("uniform", "zoology"))
    check_choice("filler", filler, ("blank", "random"))
    check_bool("distinct_values", distinct_values)
    if distinct_values and n_values < n_pairs:
        raise ValueError(f"distinct_values=True needs n_values >= n_pairs, got n_values={n_values}, n_pairs={n_pairs}")
    if isinstance(power_a, bool) or not isinstance(power_a, (int, float)) or not 0 < power_a <= 1:
        raise ValueError(f"power_a={power_a!r} must be a number in (0, 1]")
    n_queries = check_int("n_queries", n_pairs if n_queries is None else n_queries, minimum=1, maximum=n_pairs)
    # zoology placement puts queries on even offsets only: (L - 2P) // 2 slots must hold them
    per_query = 2 if placement == "zoology" else 1
    check_int("seq_len", seq_len, minimum=2 * n_pairs + per_query * n_queries)
    return _token_task(
        "mqar",
        generate_mqar,
        seq_len=seq_len,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        data_seed=data_seed,
        num_classes=n_values,
        vocab_size=2 + n_keys + n_values,
        chance=1.0 / n_values,
        n_pairs=n_pairs,
        n_queries=n_queries,
        n_keys=n_keys,
        n_values=n_values,
        placement=placement,
        filler=filler,
        distinct_values=distinct_values,
        power_a=float(power_a),
    )


@register("induction")
def induction(*, seq_len=256, n_symbols=16, n_train=10000, n_val=1000, n_test=1000, data_seed=0):
    check_int("n_symbols", n_symbols, minimum=2, maximum=250)
    check_int("seq_len", seq_len, minimum=4)
    return _token_task(
        "induction",
        generate_induction,
        seq_len=seq_len,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        data_seed=data_seed,
        num_classes=n_symbols,
        vocab_size=n_symbols + FIRST_SYMBOL,
        chance=1.0 / n_symbols,
        n_symbols=n_symbols,
    )


@register("adding")
def adding(*, seq_len=512, n_train=10000, n_val=1000, n_test=1000, data_seed=0):
    check_int("seq_len", seq_len, minimum=2)
    counts = _counts(n_train, n_val, n_test)
    check_int("data_seed", data_seed, minimum=0)
    options = dict(seq_len=seq_len, n_train=n_train, n_val=n_val, n_test=n_test, data_seed=data_seed)
    return Task(
        name="adding",
        num_classes=1,
        seq_len=seq_len,
        input_dim=2,
        kind="regression",
        chance=1.0 / 6.0,
        options=options,
        description=__doc__,
        load_split=_split_loader("adding", generate_adding, counts, data_seed, seq_len=seq_len),
    )
