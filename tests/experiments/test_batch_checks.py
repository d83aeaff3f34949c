"""The training / evaluation data path refuses batches the model would silently mis-read.

Token ids outside ``[0, vocab_size)`` (an embedding lookup past the table gives NaN or another row) and
lengths outside ``[1, L]`` (pooling over padding or over nothing) raise a ``ValueError`` naming the values,
on the host, before the batch reaches a device.
"""

import numpy as np
import pytest

from algornn.experiments import _train_lib as lib
from algornn.experiments.tasks import Task


def _task(inputs, lengths, *, vocab_size=5, name="handmade"):
    inputs, lengths = np.asarray(inputs), np.asarray(lengths)
    arrays = {"inputs": inputs, "labels": np.zeros(len(inputs), np.int32), "lengths": lengths}
    return Task(
        name=name, num_classes=2, seq_len=inputs.shape[1], load_split=lambda split: arrays, vocab_size=vocab_size
    )


GOOD = [[1, 2, 0, 0], [4, 4, 4, 4]]


class _NoModel:
    """Stands in for a model: the check must fire before any model call."""

    def eval(self):
        pass

    def train(self):
        pass


@pytest.mark.parametrize(
    "inputs, lengths, match",
    [
        ([[1, 2, 0, 0], [4, 5, 7, 4]], [2, 4], r"inputs holds token id\(s\) \[5, 7\] outside \[0, vocab_size=5\)"),
        (
            [[1, -3, 0, 0], [4, 4, 4, 4]],
            [2, 4],
            r"inputs holds token id\(s\) \[-3\] outside \[0, vocab_size=5\) \(min -3, max 4",
        ),
        (GOOD, [0, 4], r"lengths holds value\(s\) \[0\] outside \[1, L=4\]"),
        (GOOD, [2, 9], r"lengths holds value\(s\) \[9\] outside \[1, L=4\]"),
    ],
)
def test_bad_batches_are_refused_in_training_and_evaluation(inputs, lengths, match):
    task = _task(inputs, lengths)
    with pytest.raises(ValueError, match=r"task 'handmade' train batch .*: " + match):
        lib.DataStream(task, 2, seed=0).next()
    with pytest.raises(ValueError, match=r"task 'handmade' val batch 0: " + match):
        lib.evaluate(_NoModel(), task, "val", batch_size=2, mesh=lib.make_mesh(1), kind="classification")


def test_good_batches_and_eval_padding_pass():
    task = _task(GOOD, [2, 4])
    batch = lib.DataStream(task, 2, seed=0).next()
    assert sorted(batch["lengths"].tolist()) == [2, 4]
    # an evaluation tail padded with masked rows (length 0 in the task) is fine: those rows get length 1
    padded = lib.clean_batch(next(task.batches("val", 3, seed=0)), rows=4)
    lib.check_batch(padded, vocab_size=5, where="padded")
    assert padded["weight"].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_real_valued_and_pair_inputs():
    x = np.zeros((2, 3, 1), np.float32)
    lib.check_batch({"inputs": x, "lengths": np.array([3, 1])}, vocab_size=None, where="real")
    with pytest.raises(ValueError, match=r"real: lengths holds value\(s\) \[4\] outside \[1, L=3\]"):
        lib.check_batch({"inputs": x, "lengths": np.array([4, 1])}, vocab_size=None, where="real")
    pair = {
        "inputs": np.ones((1, 3), np.int32),
        "lengths": np.array([3]),
        "inputs2": np.array([[1, 9, 0]], np.int32),
        "lengths2": np.array([2]),
    }
    with pytest.raises(ValueError, match=r"pair: inputs2 holds token id\(s\) \[9\]"):
        lib.check_batch(pair, vocab_size=5, where="pair")
    with pytest.raises(ValueError, match=r"must hold integer token ids, got dtype float32"):
        lib.check_batch({"inputs": np.ones((1, 3), np.float32)}, vocab_size=5, where="ids")
