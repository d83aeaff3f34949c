"""ListOps (Nangia & Bowman 2018) as defined by the Long Range Arena generator (Tay et al. 2021, §3.1).

Shape legend: N examples, L length (``seq_len``).

Generator (LRA ``lra_benchmarks/data/listops.py``): a node at depth < ``max_depth`` is a leaf (a value
0-9) with probability 0.75, otherwise an operator MIN, MAX, MED (median, rounded down), SM (sum mod 10)
with ``randint(2, max_args)`` children; at ``max_depth`` it is a leaf. The token length (a leaf counts 1,
an operator node 2 + its children: the operator and ``]``) must satisfy ``min_length < len < max_length``
(both strict); duplicates are removed. The LRA text form nests every argument in a pair of parentheses:
``( ( ( [MAX 2 ) 9 ) ] )``. Tokenisation as in LRA: parentheses dropped, whitespace split.

Vocabulary (fixed, ``VOCAB``): 0 ``<pad>``, 1-10 the digits 0-9, 11-14 ``[MIN [MAX [MED [SM``, 15 ``]``.
Labels are the value of the expression, 10 classes; ``chance`` = 0.1 (uniform guess). The classes are
not balanced: always answering the majority class scores more (0.16 on 2000 examples of the LRA
setting; ``python -m algornn.experiments.show_task listops --stats`` prints it for any setting).

Generated splits are deterministic from ``data_seed`` and drawn from one stream in the order test, val,
train (so val/test do not change when ``n_train`` does), de-duplicated across splits, and cached as
``.npz`` (see ``cache_dir``). ``data_dir`` reads the official ``basic_{train,val,test}.tsv`` instead.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import numpy as np

from algornn.experiments._progress import progress as progress_bar
from algornn.experiments.tasks._base import SPLITS, Task, pad_tokens
from algornn.experiments.tasks._registry import cache_path, missing_files_error, register
from algornn.scan_kernels._common.validate import check_int

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VOCAB = ("<pad>",) + tuple(str(d) for d in range(10)) + OPERATORS + (END,)
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
_OP_IDS = tuple(TOKEN_ID[op] for op in OPERATORS)
_END_ID = TOKEN_ID[END]
LEAF_PROBABILITY = 0.75  # LRA: VALUE_P = 0.25, leaf when r > VALUE_P


def apply_operator(op: str, args: list[int]) -> int:
    """Value of ``op`` applied to ``args`` (MED is the median rounded down, as ``int(np.median)``)."""
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        s = sorted(args)
        return (s[(len(s) - 1) // 2] + s[len(s) // 2]) // 2
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {op!r}; expected one of {OPERATORS}")


class _TooLong(Exception):
    pass


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int, out: list[int], limit: int) -> int:
    """Append the prefix tokens of a random tree to ``out``; return its value.

    Raises ``_TooLong`` as soon as ``len(out) >= limit``: such a tree would be rejected anyway, so stopping
    early leaves the distribution of accepted trees unchanged and saves generating huge trees.
    """
    if len(out) >= limit:
        raise _TooLong
    r = rng.random() if depth < max_depth else 1.0
    if r > 1.0 - LEAF_PROBABILITY:
        value = rng.randrange(10)
        out.append(value + 1)
        return value
    slot = len(out)
    out.append(0)  # operator id, chosen after the children as in LRA
    args = [_tree(rng, depth + 1, max_depth, max_args, out, limit) for _ in range(rng.randint(2, max_args))]
    op = rng.randrange(len(OPERATORS))
    out[slot] = _OP_IDS[op]
    out.append(_END_ID)
    return apply_operator(OPERATORS[op], args)


def _sample(n, seed, min_length, max_length, max_depth, max_args, progress=False):
    """``n`` distinct token sequences (tuples of ids) with their values, in generation order."""
    rng = random.Random(seed)
    found: dict[tuple, int] = {}
    bar = progress_bar(n, "listops", unit="examples", enabled=progress)
    while len(found) < n:
        tokens: list[int] = []
        try:
            value = _tree(rng, 1, max_depth, max_args, tokens, max_length)
        except _TooLong:
            continue
        if min_length < len(tokens) < max_length:
            key = tuple(tokens)
            if key not in found:
                found[key] = value
                bar.update(1)
    bar.close()
    return list(found.items())


def to_source(tokens) -> str:
    """LRA text form of a prefix token sequence: every argument closes one parenthesis."""
    parts: list[str] = []

    def emit(i):  # returns index after the subtree starting at i
        tok = VOCAB[tokens[i]]
        if tok not in OPERATORS:
            parts.append(tok)
            return i + 1
        start = len(parts)
        parts.append(tok)
        j, n_args = i + 1, 0
        while VOCAB[tokens[j]] != END:
            j = emit(j)
            parts.append(")")
            n_args += 1
        parts.insert(start, "( " * n_args + "(")
        parts.append("] )")
        return j + 1

    emit(0)
    return " ".join(parts)


def tokenize(source: str) -> list[int]:
    """LRA tokenisation: drop parentheses, split on whitespace, map to ``VOCAB`` ids."""
    words = source.replace("(", " ").replace(")", " ").split()
    try:
        return [TOKEN_ID[w] for w in words]
    except KeyError as err:
        raise ValueError(f"ListOps source has unknown token {err.args[0]!r}; vocabulary {VOCAB[1:]}") from None


def generate(n: int, seed: int, *, min_length=500, max_length=2000, max_depth=10, max_args=10) -> list[tuple[str, int]]:
    """``n`` distinct ListOps examples ``(source, label)`` in the LRA text format."""
    return [(to_source(t), v) for t, v in _sample(n, seed, min_length, max_length, max_depth, max_args)]


def write_tsv(path, examples) -> None:
    """Write ``(source, label)`` pairs as an LRA ``Source\\tTarget`` TSV."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["Source", "Target"])
        w.writerows(examples)


def read_tsv(path) -> list[tuple[str, int]]:
    """Read an LRA ListOps TSV (header ``Source\\tTarget``)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or rows[0][:2] != ["Source", "Target"]:
        raise ValueError(f"{path}: expected a header 'Source\\tTarget', got {rows[:1]}")
    return [(r[0], int(float(r[1]))) for r in rows[1:] if r]


FILES = {split: f"basic_{split}.tsv" for split in SPLITS}


def _arrays(seqs, labels, seq_len):
    inputs, lengths = pad_tokens(seqs, seq_len, np.uint8)
    return {"inputs": inputs, "labels": np.asarray(labels, np.int8), "lengths": lengths}


@register("listops")
def listops(
    *,
    data_dir=None,
    n_train=96000,
    n_val=2000,
    n_test=2000,
    min_length=500,
    max_length=2000,
    max_depth=10,
    max_args=10,
    seq_len=None,
    data_seed=0,
    cache_dir=None,
):
    """ListOps: generated (default) or read from ``data_dir/basic_{train,val,test}.tsv``.

    ``cache_dir``: where generated splits are cached (None: ``$ALGORNN_DATA`` or ``~/.cache/algornn``;
    False: no cache). ``seq_len`` defaults to ``max_length`` (longer file examples are truncated).
    """
    check_int("min_length", min_length, minimum=0)
    check_int("max_length", max_length, minimum=min_length + 2)
    check_int("max_depth", max_depth, minimum=1)
    check_int("max_args", max_args, minimum=2)
    seq_len = check_int("seq_len", max_length if seq_len is None else seq_len, minimum=1)
    counts = {
        "train": check_int("n_train", n_train, minimum=1),
        "val": check_int("n_val", n_val, minimum=1),
        "test": check_int("n_test", n_test, minimum=1),
    }
    check_int("data_seed", data_seed, minimum=0)
    options = dict(
        data_dir=data_dir,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        min_length=min_length,
        max_length=max_length,
        max_depth=max_depth,
        max_args=max_args,
        seq_len=seq_len,
        data_seed=data_seed,
        cache_dir=cache_dir,
    )

    if data_dir is not None:
        given = Path(data_dir).expanduser()
        roots = [given, given / "listops-1000", given / "lra_release" / "listops-1000"]
        root = next((r for r in roots if all((r / f).is_file() for f in FILES.values())), given)
        missing = [str(root / f) for f in FILES.values() if not (root / f).is_file()]
        if missing:
            raise missing_files_error(
                "listops",
                data_dir,
                missing,
                "the LRA release (lra_release/listops-1000/ in "
                "lra_release.gz from google-research/long-range-arena), or write them with "
                "experiments.tasks.listops.write_tsv(generate(...))",
            )

        def load(split):
            rows = read_tsv(root / FILES[split])
            return _arrays([tokenize(s) for s, _ in rows], [y for _, y in rows], seq_len)
    else:
        gen = dict(min_length=min_length, max_length=max_length, max_depth=max_depth, max_args=max_args)
        key = dict(gen, n=[n_test, n_val, n_train], seed=data_seed, seq_len=seq_len, version=1)
        state = {}

        def load(split):
            if not state:
                state.update(_generate_splits(counts, data_seed, gen, seq_len, cache_path(cache_dir, "listops", key)))
            return state[split]

    return Task(
        name="listops",
        num_classes=10,
        seq_len=seq_len,
        vocab_size=len(VOCAB),
        load_split=load,
        chance=0.1,
        options=options,
        description=__doc__,
    )


def _generate_splits(counts, seed, gen, seq_len, path):
    if path is not None and path.is_file():
        with np.load(path) as f:
            return {s: {k: f[f"{s}/{k}"] for k in ("inputs", "labels", "lengths")} for s in SPLITS}
    total = counts["test"] + counts["val"] + counts["train"]
    pairs = _sample(total, seed, progress=total >= 5000, **gen)
    bounds = {
        "test": (0, counts["test"]),
        "val": (counts["test"], counts["test"] + counts["val"]),
        "train": (counts["test"] + counts["val"], total),
    }
    out = {s: _arrays([t for t, _ in pairs[a:b]], [v for _, v in pairs[a:b]], seq_len) for s, (a, b) in bounds.items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # atomic: concurrent writers never see half a file
        np.savez_compressed(tmp, **{f"{s}/{k}": v for s, d in out.items() for k, v in d.items()})
        tmp.replace(path)
    return out
