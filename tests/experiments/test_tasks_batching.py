"""The Task batching contract: determinism, resumability, shards, eval padding, option validation."""

import numpy as np
import pytest

from algornn.experiments.tasks import IGNORE_INDEX, get_task, list_tasks, task_options


@pytest.fixture(scope="module")
def task():
    # 103 train / 10 val examples: neither is a multiple of the batch sizes below.
    return get_task("induction", seq_len=37, n_train=103, n_val=10, n_test=10, data_seed=5)


def _row_ids(task, split):
    """Map each example's input row (bytes) to its index; rows are random, so they identify examples."""
    x = task.split_arrays(split)["inputs"]
    ids = {x[i].tobytes(): i for i in range(len(x))}
    assert len(ids) == len(x), "example rows are not unique; pick a larger seq_len"
    return ids


def _ids(task, split, batch):
    ids = _row_ids(task, split)
    x = task.split_arrays(split)["inputs"].dtype
    return [ids[row.astype(x).tobytes()] for row, keep in zip(batch["inputs"], batch["mask"]) if keep]


def test_registry_lists_every_task():
    names = list_tasks()
    for name in (
        "listops",
        "pathfinder",
        "pathx",
        "text",
        "retrieval",
        "image",
        "scifar",
        "smnist",
        "psmnist",
        "copying",
        "adding",
        "selective_copying",
        "mqar",
        "induction",
    ):
        assert name in names
    assert "seq_len" in task_options("copying")


def test_batch_format(task):
    b = next(task.batches("train", 8, seed=0))
    assert set(b) == {"inputs", "labels", "lengths", "mask"}
    assert b["inputs"].shape == (8, 37) and b["inputs"].dtype == np.int32
    assert b["labels"].shape == (8, 37) and b["labels"].dtype == np.int32
    assert b["lengths"].dtype == np.int32 and b["mask"].dtype == bool and b["mask"].all()
    assert task.per_position and task.kind == "sequence_labels"
    assert b["inputs"].min() >= 0 and b["inputs"].max() < task.vocab_size


def test_deterministic_for_seed_and_epoch(task):
    a = [b["inputs"] for b in task.batches("train", 8, seed=3, epoch=1)]
    b = [b["inputs"] for b in task.batches("train", 8, seed=3, epoch=1)]
    c = [b["inputs"] for b in task.batches("train", 8, seed=4, epoch=1)]
    d = [b["inputs"] for b in task.batches("train", 8, seed=3, epoch=2)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(np.stack(a), np.stack(c))
    assert not np.array_equal(np.stack(a), np.stack(d))


def test_train_epoch_drops_last_partial_batch_and_never_repeats(task):
    assert task.steps_per_epoch("train", 8) == 103 // 8
    seen = [i for b in task.batches("train", 8, seed=0) for i in _ids(task, "train", b)]
    assert len(seen) == (103 // 8) * 8 and len(set(seen)) == len(seen)


@pytest.mark.parametrize("start", [0, 1, 7, 11, 12])
def test_resume_matches_uninterrupted_run(task, start):
    full = list(task.batches("train", 8, seed=9, epoch=4))
    resumed = list(task.batches("train", 8, seed=9, epoch=4, start_step=start))
    assert len(resumed) == len(full) - start
    for x, y in zip(full[start:], resumed):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("split", ["train", "val"])
def test_shards_are_disjoint_and_cover_each_global_batch(task, split):
    full = list(task.batches(split, 8, seed=1, epoch=2))
    shards = [list(task.batches(split, 8, seed=1, epoch=2, shard=(i, 4))) for i in range(4)]
    assert all(len(s) == len(full) for s in shards)  # every process runs the same number of steps
    for step, whole in enumerate(full):
        parts = [s[step] for s in shards]
        assert all(p["inputs"].shape[0] == 2 for p in parts)
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
        ids = [i for p in parts for i in _ids(task, split, p)]
        assert len(ids) == len(set(ids))


def test_eval_keeps_every_example_once_in_order_with_masked_padding(task):
    batches = list(task.batches("val", 4, seed=123))
    assert len(batches) == task.steps_per_epoch("val", 4) == 3
    assert [i for b in batches for i in _ids(task, "val", b)] == list(range(10))
    last = batches[-1]
    np.testing.assert_array_equal(last["mask"], [True, True, False, False])
    assert (last["labels"][2:] == IGNORE_INDEX).all() and (last["lengths"][2:] == 0).all()
    assert (last["inputs"][2:] == 0).all()
    # eval order ignores the seed
    other = list(task.batches("val", 4, seed=7))
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(batches, other))


def test_regression_padding_and_dtypes():
    t = get_task("adding", seq_len=20, n_train=8, n_val=5, n_test=5)
    b = list(t.batches("val", 4, seed=0))[-1]
    assert b["inputs"].shape == (4, 20, 2) and b["inputs"].dtype == np.float32
    assert b["labels"].dtype == np.float32 and b["mask"].tolist() == [True, False, False, False]
    assert t.kind == "regression" and t.input_dim == 2 and t.vocab_size is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(split="dev", batch_size=4, seed=0), "split"),
        (dict(split="train", batch_size=0, seed=0), "batch_size"),
        (dict(split="train", batch_size=6, seed=0, shard=(0, 4)), "divisible"),
        (dict(split="train", batch_size=4, seed=0, shard=(4, 4)), "shard"),
        (dict(split="train", batch_size=4, seed=-1), "seed"),
        (dict(split="train", batch_size=4, seed=0, start_step=999), "start_step"),
        (dict(split="train", batch_size=104, seed=0), "exceeds the 103 examples"),
    ],
)
def test_bad_batch_arguments_raise(task, kwargs, match):
    with pytest.raises(ValueError, match=match):
        next(task.batches(**kwargs))


def test_bad_task_name_and_options_raise():
    with pytest.raises(ValueError, match="unknown task"):
        get_task("listopz")
    with pytest.raises(ValueError, match="allowed: .*seq_len"):
        get_task("copying", seqlen=10)
    with pytest.raises(ValueError, match="seq_len"):
        get_task("copying", seq_len=10, n_copy=10)
    with pytest.raises(ValueError, match="difficulty"):
        get_task("pathfinder", difficulty="medium")
    with pytest.raises(ValueError, match="size"):
        get_task("pathx", size=100)
