"""First-fit packing of variable-length examples (experiments/tasks/packing.py)."""

import json

import numpy as np
import pytest

from algornn.experiments.tasks import get_task, packing


def _first_fit_loop(lengths, capacity, max_segments):
    """Plain O(N * rows) first fit: the definition the tree version must reproduce."""
    free, count, rows = [], [], []
    for i, n in enumerate(lengths):
        for r in range(len(free)):
            if free[r] >= n and count[r] < max_segments:
                break
        else:
            r = len(free)
            free.append(capacity)
            count.append(0)
            rows.append([])
        free[r] -= n
        count[r] += 1
        rows[r].append(i)
    return rows


@pytest.mark.parametrize("capacity,max_segments", [(100, 3), (37, 50), (5, 1)])
def test_first_fit_matches_the_plain_loop(capacity, max_segments):
    lengths = np.random.default_rng(capacity).integers(1, capacity + 1, 700)
    assert packing.first_fit(lengths, capacity, max_segments) == _first_fit_loop(
        lengths.tolist(), capacity, max_segments
    )


def test_first_fit_rejects_examples_longer_than_a_row():
    with pytest.raises(ValueError, match="capacity=10"):
        packing.first_fit([3, 11], 10, 4)


@pytest.fixture(scope="module")
def listops():
    return get_task(
        "listops", n_train=64, n_val=8, n_test=8, min_length=20, max_length=120, max_depth=4, cache_dir=False
    )


def test_packed_rows_hold_every_example_once_and_match_it(listops):
    arrays = listops.split_arrays("train")
    batches = list(packing.packed_batches(listops, "train", 4, seed=3, max_segments=8))
    rows = packing.pack_rows(listops, "train", seed=3, epoch=0, max_segments=8)
    assert len(batches) == len(rows) // 4
    seen = []
    for b, batch in enumerate(batches):
        for r in range(4):
            seg = batch["segment_ids"][r]
            ids = [s for s in np.unique(seg) if s > 0]
            assert ids == list(range(1, len(ids) + 1))
            for s, example in zip(ids, rows[4 * b + r], strict=True):
                where = np.flatnonzero(seg == s)
                assert np.all(np.diff(where) == 1)  # one contiguous run per segment
                n = int(arrays["lengths"][example])
                np.testing.assert_array_equal(batch["inputs"][r, where], arrays["inputs"][example, :n])
                assert batch["labels"][r, s - 1] == arrays["labels"][example]
                seen.append(example)
            assert np.all(batch["labels"][r, len(ids) :] == -1)
            assert np.all(batch["inputs"][r, seg == 0] == 0)
    assert len(seen) == len(set(seen))
    stats = packing.padding_fraction(listops, max_segments=8, seed=3)
    assert stats["packed_rows"] == len(rows) < stats["padded_rows"]
    assert stats["padding_fraction_packed"] < stats["padding_fraction_padded"]


def test_packed_batches_resume_and_shard(listops):
    full = list(packing.packed_batches(listops, "train", 4, seed=1, epoch=2))
    resumed = list(packing.packed_batches(listops, "train", 4, seed=1, epoch=2, start_step=1))
    for a, b in zip(full[1:], resumed, strict=True):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    halves = [list(packing.packed_batches(listops, "train", 4, seed=1, epoch=2, shard=(i, 2))) for i in range(2)]
    for whole, lo, hi in zip(full, *halves, strict=True):
        np.testing.assert_array_equal(whole["segment_ids"], np.concatenate([lo["segment_ids"], hi["segment_ids"]]))


def test_tasks_that_cannot_share_a_row_are_refused():
    adding = get_task("adding", seq_len=16, n_train=8, n_val=4, n_test=4)  # real inputs, regression
    with pytest.raises(ValueError, match="train.pack"):
        list(packing.packed_batches(adding, "train", 2, seed=0))


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_packed_loss_equals_each_example_alone(listops, pooling):
    """The trainer's loss on a packed batch is the sum of the examples' losses run one per row (S4D runs its scan
    form when packed and its convolution form unpacked: equal to float tolerance)."""
    from flax import nnx

    from algornn.experiments import _train_lib as lib
    from algornn.experiments._models import build_model, model_spec
    from algornn.experiments.config import Config, ModelConfig, TaskConfig

    config = Config(
        task=TaskConfig(name="listops"),
        model=ModelConfig(mixer="s4d", d_model=8, n_layers=2, mixer_options={"d_state": 4}, pooling=pooling),
    )
    model = build_model(config, model_spec(listops), rngs=nnx.Rngs(0))
    stream = lib.DataStream(listops, 2, seed=5, pack=8, shard=(0, 1))
    packed = stream.next()
    rows = packing.pack_rows(listops, "train", seed=5, epoch=0, max_segments=8)[:2]
    alone = lib.clean_batch(listops.examples("train", [i for row in rows for i in row]))
    got = lib.loss_terms(model, packed, kind="classification", bf16=False)
    want = lib.loss_terms(model, alone, kind="classification", bf16=False)
    assert float(got[1][1]) == float(want[1][1]) == sum(len(r) for r in rows) > 2  # every example scored once
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=2e-5)
    assert float(got[1][0]) == float(want[1][0])


@pytest.mark.loose_promotion  # optax's bias correction mixes Python floats and int32 counts
def test_trainer_packs_and_logs_padding(tmp_path):
    from algornn.experiments.config import Config, ModelConfig, TaskConfig, TrainConfig
    from algornn.experiments.trainer import train_and_evaluate

    options = dict(n_train=64, n_val=8, n_test=8, min_length=20, max_length=120, max_depth=4, cache_dir=False)
    config = Config(
        task=TaskConfig(name="listops", options=options),
        model=ModelConfig(mixer="s4d", d_model=8, n_layers=1, mixer_options={"d_state": 4}),
        train=TrainConfig(steps=2, batch_size=4, log_every=1, progress=False, test_at_end=False, pack=True),
    )
    train_and_evaluate(config, tmp_path / "run")
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 2 and all(0.0 <= r["padding"] < 0.5 and r["real_tokens_per_s"] > 0 for r in train)
