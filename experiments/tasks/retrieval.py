"""Document matching on the ACL Anthology Network (LRA "Retrieval", Tay et al. 2021 §3.3).

Shape legend: N examples, L length per document (``seq_len``, default 4000).

Reads the LRA files ``new_aan_pairs.{train,eval,test}.tsv`` (no header; columns ``label, id1, id2, text1,
text2``; the label is written as a float). As in LRA, each document is cut to its first 10000
characters, encoded as UTF-8 byte ids + 1 (vocab 257, 0 = padding), then truncated to ``seq_len``.
Batches carry both documents: ``inputs``/``lengths`` and ``inputs2``/``lengths2``; ``pair = True``.
Labels: 1 = the papers are linked by a citation; 2 classes, chance 0.5 (uniform guess).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from algornn.experiments.tasks._base import Task, pad_tokens
from algornn.experiments.tasks._registry import missing_files_error, register
from algornn.experiments.tasks.text import byte_converter, encode_bytes
from algornn.scan_kernels._common.validate import check_int

FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}
SOURCE = (
    "the tsv_data/ folder of lra_release.gz from google-research/long-range-arena (the public bucket "
    "holds only ids; the texts come from the LRA release)"
)
MAX_CHARS = 10000


def find_aan_dir(data_dir) -> Path:
    root = Path(data_dir).expanduser()
    for c in (root, root / "tsv_data", root / "lra_release" / "tsv_data"):
        if all((c / f).is_file() for f in FILES.values()):
            return c
    raise missing_files_error("retrieval", data_dir, [str(root / f) for f in FILES.values()], SOURCE)


def write_tsv(path, rows) -> None:
    """Write ``(label, id1, id2, text1, text2)`` rows in the LRA AAN format (label as a float)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        for label, id1, id2, t1, t2 in rows:
            w.writerow([f"{float(label)}", id1, id2, t1, t2])


def read_tsv(path) -> list[tuple[int, str, str, str, str]]:
    """Rows ``(label, id1, id2, text1, text2)`` of an AAN TSV."""
    csv.field_size_limit(sys.maxsize)
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f, delimiter="\t")):
            if not row:
                continue
            if len(row) != 5:
                raise ValueError(f"{path}:{i + 1}: expected 5 tab-separated columns, got {len(row)}")
            out.append((int(float(row[0])), row[1], row[2], row[3], row[4]))
    return out


def _arrays(rows, seq_len):
    a, la = pad_tokens([encode_bytes(r[3][:MAX_CHARS], seq_len) for r in rows], seq_len, np.uint8)
    b, lb = pad_tokens([encode_bytes(r[4][:MAX_CHARS], seq_len) for r in rows], seq_len, np.uint8)
    return {
        "inputs": a,
        "lengths": la,
        "inputs2": b,
        "lengths2": lb,
        "labels": np.asarray([r[0] for r in rows], np.int8),
    }


@register("retrieval")
def retrieval(*, data_dir=None, seq_len=4000):
    """AAN retrieval from ``data_dir`` (holding ``new_aan_pairs.*.tsv`` or ``tsv_data/``)."""
    seq_len = check_int("seq_len", seq_len, minimum=1)
    if data_dir is None:
        raise missing_files_error("retrieval", None, [f"<data_dir>/{f}" for f in FILES.values()], SOURCE)
    folder = find_aan_dir(data_dir)

    def load(split):
        return _arrays(read_tsv(folder / FILES[split]), seq_len)

    return Task(
        name="retrieval",
        num_classes=2,
        seq_len=seq_len,
        vocab_size=257,
        pair=True,
        chance=0.5,
        options=dict(data_dir=data_dir, seq_len=seq_len),
        convert=byte_converter,
        description=__doc__,
        load_split=load,
    )
