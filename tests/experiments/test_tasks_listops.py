"""ListOps: labels re-computed by an independent recursive parser of the LRA text; length bounds; files."""

import numpy as np
import pytest

from algornn.experiments.tasks import get_task
from algornn.experiments.tasks import listops as lo
from tests.experiments._task_files import write_listops_tsv

OPS = {"[MIN": min, "[MAX": max, "[MED": lambda a: int(np.median(a)), "[SM": lambda a: sum(a) % 10}


def evaluate(source: str):
    """Value, depth, argument counts and token count of an LRA ListOps string, parsed recursively.

    Grammar of the LRA form: ``expr := digit | "(" * (k + 1) OP expr ")" expr ")" ... expr ")" "]" ")"``
    (k arguments: every argument closes one parenthesis, ``]`` the last).
    """
    toks = source.split()
    arg_counts = []

    def expr(i, depth):
        if toks[i].isdigit():
            return int(toks[i]), i + 1, depth
        opens = 0
        while toks[i] == "(":
            opens, i = opens + 1, i + 1
        op = toks[i]
        assert op in OPS, f"expected an operator at token {i}, got {op!r}"
        i += 1
        args, deepest = [], depth
        for _ in range(opens - 1):
            value, i, d = expr(i, depth + 1)
            assert toks[i] == ")", f"expected ')' at token {i}"
            args.append(value)
            deepest, i = max(deepest, d), i + 1
        assert toks[i : i + 2] == ["]", ")"], f"expected '] )' at token {i}"
        arg_counts.append(len(args))
        return OPS[op](args), i + 2, deepest

    value, end, depth = expr(0, 1)
    assert end == len(toks), "trailing tokens"
    n_tokens = sum(t not in "()" for t in toks)
    return value, depth, arg_counts, n_tokens


def test_parser_on_hand_examples():
    assert evaluate("( ( ( [MAX 2 ) 9 ) ] )")[0] == 9
    assert evaluate("( ( ( [MED 2 ) 5 ) ] )")[0] == 3  # int(median(2, 5)) = int(3.5)
    src = "( ( ( ( [SM 4 ) ( ( ( [MIN 7 ) 3 ) ] ) ) 9 ) ] )"
    assert evaluate(src)[:2] == ((4 + 3 + 9) % 10, 3)  # depth counts leaves: root 1, MIN 2, its leaves 3


def test_generated_labels_match_independent_evaluator_and_bounds():
    examples = lo.generate(150, seed=3, min_length=30, max_length=200, max_depth=6, max_args=5)
    assert len({s for s, _ in examples}) == 150  # no duplicates
    counts = []
    for source, label in examples:
        value, depth, args, n_tokens = evaluate(source)
        assert value == label
        assert 30 < n_tokens < 200 and depth <= 6
        assert all(2 <= a <= 5 for a in args)
        assert n_tokens == len(lo.tokenize(source))
        counts.extend(args)
    assert set(counts) == {2, 3, 4, 5}  # every argument count occurs
    assert len({label for _, label in examples}) >= 8


def test_lra_default_lengths_small_sample():
    for source, label in lo.generate(5, seed=0):
        value, depth, _, n_tokens = evaluate(source)
        assert value == label and 500 < n_tokens < 2000 and depth <= 10


def test_task_tokens_decode_to_the_source_and_splits_are_disjoint(tmp_path):
    t = get_task("listops", n_train=60, n_val=20, n_test=20, min_length=10, max_length=80, cache_dir=tmp_path)
    seen = set()
    for split in ("train", "val", "test"):
        arr = t.split_arrays(split)
        assert arr["inputs"].shape == (t.num_examples(split), 80)
        for x, y, n in zip(arr["inputs"], arr["labels"], arr["lengths"]):
            assert (x[n:] == 0).all() and (x[:n] > 0).all() and 10 < n < 80
            value = evaluate(lo.to_source(x[:n]))[0]
            assert value == y
            seen.add(x[:n].tobytes())
    assert len(seen) == 100
    # cached file is reused: a second task reads identical arrays
    assert len(list(tmp_path.glob("listops-*.npz"))) == 1
    t2 = get_task("listops", n_train=60, n_val=20, n_test=20, min_length=10, max_length=80, cache_dir=tmp_path)
    np.testing.assert_array_equal(t2.split_arrays("train")["inputs"], t.split_arrays("train")["inputs"])


def test_val_and_test_do_not_depend_on_n_train():
    a = get_task("listops", n_train=10, n_val=5, n_test=5, min_length=5, max_length=40, cache_dir=False)
    b = get_task("listops", n_train=30, n_val=5, n_test=5, min_length=5, max_length=40, cache_dir=False)
    for split in ("val", "test"):
        np.testing.assert_array_equal(a.split_arrays(split)["inputs"], b.split_arrays(split)["inputs"])


def test_reads_official_tsv_files(tmp_path):
    rows = {
        "train": [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( ( ( [SM 4 ) ( ( ( [MIN 7 ) 3 ) ] ) ) 9 ) ] )", 6)],
        "val": [("( ( ( [MED 2 ) 5 ) ] )", 3)],
        "test": [("( ( ( [MIN 8 ) 1 ) ] )", 1)],
    }
    folder = tmp_path / "lra_release" / "listops-1000"  # the release layout
    folder.mkdir(parents=True)
    for split, r in rows.items():
        write_listops_tsv(folder / f"basic_{split}.tsv", r)
    t = get_task("listops", data_dir=tmp_path, seq_len=12)
    assert get_task("listops", data_dir=folder).num_examples("train") == 2
    arr = t.split_arrays("train")
    vocab = lo.VOCAB
    assert [vocab[i] for i in arr["inputs"][0][: arr["lengths"][0]]] == ["[MAX", "2", "9", "]"]
    assert arr["lengths"].tolist() == [4, 8] and arr["labels"].tolist() == [9, 6]
    assert t.split_arrays("val")["labels"].tolist() == [3] and t.num_examples("test") == 1
    # round trip through the library writer as well
    lo.write_tsv(tmp_path / "copy.tsv", rows["train"])
    assert lo.read_tsv(tmp_path / "copy.tsv") == rows["train"]


def test_missing_files_and_bad_tokens(tmp_path):
    with pytest.raises(FileNotFoundError, match="basic_train.tsv"):
        get_task("listops", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown token"):
        lo.tokenize("( ( [MAX 2 ) [FIRST ) ] )")
    with pytest.raises(ValueError, match="max_length"):
        get_task("listops", min_length=100, max_length=50)


def test_tree_distribution_follows_the_lra_definition():
    """Before length filtering: leaf probability 0.75, 2..max_args arguments and operators uniform."""
    import random

    rng = random.Random(0)
    roots_leaf, args, ops = 0, [], []
    draws = 4000
    for _ in range(draws):
        tokens = []
        lo._tree(rng, 1, 3, 5, tokens, 10**9)
        if len(tokens) == 1:
            roots_leaf += 1
            continue
        source = lo.to_source(tokens)
        ops.append(source.replace("(", " ").split()[0])
        args.append(evaluate(source)[2][-1])  # the root is the last operator to close
    assert abs(roots_leaf / draws - 0.75) < 0.03
    counts = np.bincount(args, minlength=6)[2:]
    assert counts.min() > 0.7 * counts.mean() and len(counts) == 4  # uniform over 2..5
    freq = [ops.count(op) / len(ops) for op in lo.OPERATORS]
    assert max(abs(f - 0.25) for f in freq) < 0.06
    # at max_depth every node is a leaf
    tokens = []
    lo._tree(rng, 3, 3, 5, tokens, 10**9)
    assert len(tokens) == 1
