"""Capability-suite tasks: labels recomputed from the tokens by plain Python, splits, padding, options.

Every check decodes the generated tokens and recomputes the label independently of the generator (a
window scan, a dict of the latest value, a bit count, Python's own ``eval`` of the expression).
"""

import numpy as np
import pytest

from algornn.experiments import show_task
from algornn.experiments.tasks import get_task, list_tasks, task_options

SMALL = dict(n_train=400, n_val=50, n_test=200)


def _all(task, split):
    return task.examples(split, np.arange(task.num_examples(split)))


def test_registered_with_the_contract_options():
    assert {"presence", "retrieval_capacity", "parity", "modular_arithmetic"} <= set(list_tasks())
    assert task_options("presence") == dict(
        seq_len=512,
        window=10,
        n_symbols=16,
        distractors=False,
        query_token=False,
        n_train=10000,
        n_val=1000,
        n_test=1000,
        data_seed=0,
    )
    assert {"n_keys", "setting", "n_values"} <= set(task_options("retrieval_capacity"))
    for name in ("parity", "modular_arithmetic"):
        opts = task_options(name)
        assert (opts["min_len"], opts["max_len"], opts["test_min_len"], opts["test_max_len"]) == (3, 40, 40, 256)
    assert task_options("modular_arithmetic")["modulus"] == 5


# ---------------------------------------------------------------------- presence
@pytest.mark.parametrize("distractors", [False, True])
def test_presence_labels_balance_and_distractors(distractors):
    t = get_task("presence", seq_len=60, window=7, n_symbols=5, distractors=distractors, **SMALL)
    assert t.kind == "classification" and t.num_classes == 2 and t.vocab_size == 6 and t.chance == 0.5
    ex = _all(t, "train")
    x, y = ex["inputs"], ex["labels"]
    assert x.shape == (400, 60) and x.min() >= 1 and x.max() <= 5 and (ex["lengths"] == 60).all()
    for row, label in zip(x, y):
        seen = False
        for token in row[:7]:
            seen = seen or int(token) == 1
        assert int(label) == int(seen)
    assert int(y.sum()) == 200  # exactly balanced
    late = (x[:, 7:] == 1).any(axis=1)
    if distractors:  # the marker also occurs after the window in negative rows (a distractor to ignore)
        assert late[y == 0].mean() > 0.5
    else:  # a pure memory task: the marker occurs only inside the window
        assert not late.any()
    # an odd-sized split: floor(n / 2) positives
    assert (
        int(
            get_task("presence", seq_len=20, window=3, n_train=5, n_val=3, n_test=3)
            .examples("val", np.arange(3))["labels"]
            .sum()
        )
        == 1
    )


def test_presence_query_token_ends_every_row_and_leaves_the_rest_alike():
    plain = get_task("presence", seq_len=30, window=7, n_symbols=5, **SMALL)
    query = get_task("presence", seq_len=30, window=7, n_symbols=5, query_token=True, **SMALL)
    a, b = _all(plain, "train"), _all(query, "train")
    assert query.vocab_size == 7 and plain.vocab_size == 6
    assert (b["inputs"][:, -1] == 6).all() and np.array_equal(a["inputs"][:, :-1], b["inputs"][:, :-1])
    assert np.array_equal(a["labels"], b["labels"])
    with pytest.raises(ValueError, match="window=30 must be an integer in \\[1, 29\\]"):
        get_task("presence", seq_len=30, window=30, query_token=True, **SMALL)
    with pytest.raises(ValueError, match="n_symbols=255 must be an integer in \\[2, 254\\]"):
        get_task("presence", seq_len=30, n_symbols=255, query_token=True, **SMALL)


def test_presence_deterministic_by_seed():
    a = get_task("presence", seq_len=40, **SMALL).split_arrays("train")["inputs"]
    b = get_task("presence", seq_len=40, **SMALL).split_arrays("train")["inputs"]
    c = get_task("presence", seq_len=40, data_seed=1, **SMALL).split_arrays("train")["inputs"]
    v = get_task("presence", seq_len=40, **SMALL).split_arrays("val")["inputs"]
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a[:50], v)


@pytest.mark.parametrize(
    "opts, word",
    [
        (dict(seq_len=20, window=21), "window"),
        (dict(window=0), "window"),
        (dict(n_symbols=1), "n_symbols"),
        (dict(seq_len=1), "seq_len"),
        (dict(n_train=1), "n_train"),
        (dict(data_seed=-1), "data_seed"),
    ],
)
def test_presence_bad_options(opts, word):
    with pytest.raises(ValueError, match=word):
        get_task("presence", **opts)


# ---------------------------------------------------------------------- retrieval capacity
@pytest.mark.parametrize("setting", [1, 2])
def test_retrieval_capacity_labels_are_the_latest_value(setting):
    s, n_values = 9, 6
    t = get_task("retrieval_capacity", n_keys=s, setting=setting, n_values=n_values, **SMALL)
    items = s if setting == 1 else 2 * s
    assert t.seq_len == 2 * items + 1 and t.num_classes == n_values and t.vocab_size == 1 + s + n_values
    ex = _all(t, "test")
    x, y = ex["inputs"], ex["labels"]
    overwritten = 0
    for row, lab in zip(x, y):
        memory, first = {}, {}
        for j in range(items):
            key, value = int(row[2 * j]), int(row[2 * j + 1])
            assert 1 <= key <= s and s + 1 <= value <= s + n_values
            memory[key] = value - s - 1
            first.setdefault(key, value - s - 1)
        if setting == 1:
            assert sorted(memory) == list(range(1, s + 1))  # S unique keys, each once
        query = int(row[-1])
        assert query in memory
        assert (lab[:-1] == -1).all() and int(lab[-1]) == memory[query]
        overwritten += first[query] != memory[query]
    if setting == 2:  # keys repeat, and the latest value differs from the first one often
        assert overwritten > 0.3 * len(x)
    counts = np.bincount(y[:, -1], minlength=n_values) / len(y)
    assert np.abs(counts - 1 / n_values).max() < 0.1


@pytest.mark.parametrize(
    "opts, word",
    [
        (dict(setting=3), "setting"),
        (dict(setting=True), "setting"),
        (dict(n_keys=1), "n_keys"),
        (dict(n_values=1), "n_values"),
    ],
)
def test_retrieval_capacity_bad_options(opts, word):
    with pytest.raises(ValueError, match=word):
        get_task("retrieval_capacity", **opts)


# ---------------------------------------------------------------------- parity / modular arithmetic
def _check_layout(ex, lo, hi, width):
    x, y, n = ex["inputs"], ex["labels"], ex["lengths"]
    assert x.shape[1] == width and y.shape[1] == width
    assert n.min() >= lo and n.max() <= hi
    for row, lab, length in zip(x, y, n):
        assert (row[:length] > 0).all() and (row[length:] == 0).all()  # right padding with id 0
        assert (lab[: length - 1] == -1).all() and lab[length - 1] >= 0 and (lab[length:] == -1).all()


def test_parity_labels_lengths_and_padding():
    t = get_task("parity", min_len=3, max_len=20, test_min_len=20, test_max_len=64, **SMALL)
    assert t.num_classes == 2 and t.vocab_size == 3 and t.seq_len == 20
    for split, lo, hi in (("train", 3, 20), ("val", 3, 20), ("test", 20, 64)):
        ex = _all(t, split)
        _check_layout(ex, lo, hi, hi)
        for row, lab, length in zip(ex["inputs"], ex["labels"], ex["lengths"]):
            ones = 0
            for token in row[:length]:
                assert token in (1, 2)
                ones += token == 2
            assert int(lab[length - 1]) == ones % 2
    test_lengths = t.split_arrays("test")["lengths"]
    assert len(np.unique(test_lengths)) > 30  # lengths spread over the range
    y = t.split_arrays("train")["labels"]
    assert abs(float((y[y >= 0] == 1).mean()) - 0.5) < 0.08


def _evaluate(row, length, modulus):
    """Decode the tokens to text and let Python evaluate it (* binds tighter than + and -)."""
    text = []
    for token in row[:length]:
        token = int(token)
        text.append(str(token - 1) if token <= modulus else "+-*"[token - modulus - 1])
    return eval("".join(text)) % modulus  # noqa: S307 - digits and + - * only


@pytest.mark.parametrize("modulus", [5, 7])
def test_modular_arithmetic_labels_follow_precedence(modulus):
    t = get_task("modular_arithmetic", modulus=modulus, max_len=21, test_min_len=22, test_max_len=61, **SMALL)
    assert t.num_classes == modulus and t.vocab_size == modulus + 4
    for split, lo, hi in (("train", 3, 21), ("test", 23, 61)):
        ex = _all(t, split)
        _check_layout(ex, lo, hi, 21 if split == "train" else 61)
        assert (ex["lengths"] % 2 == 1).all()
        for row, lab, length in zip(ex["inputs"], ex["labels"], ex["lengths"]):
            assert int(lab[length - 1]) == _evaluate(row, length, modulus)
    # all three operators occur
    x = t.split_arrays("test")["inputs"]
    assert {modulus + 1, modulus + 2, modulus + 3} <= set(np.unique(x[:, 1::2]).tolist())
    y = t.split_arrays("test")["labels"]
    counts = np.bincount(y[y >= 0], minlength=modulus) / len(y)
    assert np.abs(counts - 1 / modulus).max() < 0.08


def test_modular_arithmetic_docstring_example():
    # "1 + 2 * 3 = 2 (mod 5)" and "1 - 1 - 1 = 4": the evaluator in the tests agrees with the definition
    assert _evaluate(np.array([2, 6, 3, 8, 4]), 5, 5) == 2
    assert _evaluate(np.array([2, 7, 2, 7, 2]), 5, 5) == 4


def test_state_tracking_deterministic_by_seed():
    a = get_task("parity", **SMALL).split_arrays("test")
    b = get_task("parity", **SMALL).split_arrays("test")
    c = get_task("parity", data_seed=3, **SMALL).split_arrays("test")
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["inputs"], c["inputs"])


@pytest.mark.parametrize(
    "name, opts, word",
    [
        ("parity", dict(min_len=0), "min_len"),
        ("parity", dict(min_len=10, max_len=5), "max_len"),
        ("parity", dict(test_min_len=300), "test_max_len"),
        ("parity", dict(n_test=0), "n_test"),
        ("modular_arithmetic", dict(modulus=1), "modulus"),
        ("modular_arithmetic", dict(min_len=4, max_len=4), "min_len=4"),
        ("modular_arithmetic", dict(test_min_len=50, test_max_len=50), "test_min_len=50"),
    ],
)
def test_state_tracking_bad_options(name, opts, word):
    with pytest.raises(ValueError, match=word):
        get_task(name, **opts)


def test_batches_pad_each_split_to_its_own_width():
    t = get_task("parity", max_len=12, test_min_len=30, test_max_len=50, n_train=16, n_val=8, n_test=5)
    train = next(t.batches("train", 8, seed=0))
    test = next(t.batches("test", 8, seed=0))
    assert train["inputs"].shape == (8, 12) and test["inputs"].shape == (8, 50)
    assert test["mask"].sum() == 5 and (test["labels"][5:] == -1).all()


# ---------------------------------------------------------------------- existing tasks in the papers' settings
def test_mqar_zoology_layout():
    p, length = 8, 128
    t = get_task(
        "mqar",
        seq_len=length,
        n_pairs=p,
        n_keys=4096,
        n_values=4096,
        placement="zoology",
        filler="random",
        distinct_values=True,
        **SMALL,
    )
    assert t.vocab_size == 8194 and t.num_classes == 4096
    ex = _all(t, "train")
    x, y = ex["inputs"], ex["labels"]
    gaps = []
    for row, lab in zip(x, y):
        keys = [int(k) for k in row[0 : 2 * p : 2]]
        values = [int(v) for v in row[1 : 2 * p : 2]]
        assert all(2 <= k < 4098 for k in keys) and all(4098 <= v < 8194 for v in values)
        assert len(set(keys)) == p and len(set(values)) == p
        scored = np.flatnonzero(lab >= 0)
        assert len(scored) == p
        for pos in scored:
            assert (pos - 2 * p) % 2 == 0  # queries on even offsets after the context
            j = keys.index(int(row[pos]))
            assert int(lab[pos]) == values[j] - 4098
            gaps.append((pos - 2 * p) // 2)
    # the power law puts most queries near the context: far below the uniform mean gap of ~ space / 2
    space = (length - 2 * p) // 2
    assert np.mean(gaps) < 0.35 * space
    # random filler: non-query positions are not all blank
    assert (x[:, 2 * p :] != 1).mean() > 0.9


def test_mqar_defaults_unchanged():
    x = get_task("mqar", seq_len=40, n_pairs=4, n_train=50, n_val=5, n_test=5).split_arrays("train")["inputs"]
    assert set(np.unique(x[:, 8:]).tolist()) <= set(range(1, 66))  # blanks and keys only after the context
    with pytest.raises(ValueError, match="placement"):
        get_task("mqar", placement="power")
    with pytest.raises(ValueError, match="distinct_values"):
        get_task("mqar", n_values=4, n_pairs=8, distinct_values=True)
    with pytest.raises(ValueError, match="seq_len"):
        get_task("mqar", seq_len=24, n_pairs=8, placement="zoology")


def test_induction_changes_only_with_seq_len():
    tasks = [get_task("induction", seq_len=n, n_train=50, n_val=5, n_test=100) for n in (64, 1024)]
    assert len({(t.vocab_size, t.num_classes) for t in tasks}) == 1 and tasks[0].vocab_size == 16 + 3
    for t in tasks:
        ex = _all(t, "test")
        x, y = ex["inputs"], ex["labels"]
        assert x.shape[1] == t.seq_len
        for row, lab in zip(x, y):
            triggers = np.flatnonzero(row == 2)
            assert len(triggers) == 2 and triggers[1] == t.seq_len - 1  # one trigger inside, one at the end
            assert int(lab[-1]) == int(row[triggers[0] + 1]) - 3 and (lab[:-1] == -1).all()


def test_selective_copying_mamba_setting():
    t = get_task("selective_copying", seq_len=200, n_copy=16, n_symbols=16, **SMALL)
    x, y = _all(t, "train")["inputs"], _all(t, "train")["labels"]
    assert t.num_classes == 16
    for row, lab in zip(x, y):
        delim = int(np.flatnonzero(row == 2)[0])
        data = [int(v) - 3 for v in row[:delim] if v >= 3]
        assert data == [int(v) for v in lab[-16:]] and len(data) == 16


def test_show_task_draws_and_describes_the_new_tasks(tmp_path, capsys):
    out = tmp_path / "presence.png"
    args = ["presence", "--n", "3", "--out", str(out), "--stats", "--set", "seq_len=30", "--set", "n_train=20"]
    assert show_task.main(args) == 0 and out.stat().st_size > 1000
    assert "presence [train] examples=20" in capsys.readouterr().out
    for name, opts, expected in (
        ("retrieval_capacity", dict(n_keys=5, setting=2), "seq_len=21 kind=sequence_labels"),
        ("parity", dict(max_len=12, test_max_len=40), "lengths: min=3"),
        ("modular_arithmetic", dict(max_len=11), "labels (20 scored)"),
    ):
        text = show_task.stats(get_task(name, n_train=20, **opts), "train")
        assert f"{name} [train] examples=20" in text and expected in text
