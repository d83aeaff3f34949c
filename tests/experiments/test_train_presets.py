"""One training step of EVERY preset on a shrunken config (through the same dotted overrides as the CLI).

The model keeps each preset's structure (mixer, its options, norm, prenorm, pooling, head, optimizer groups)
with a tiny width, one layer and short sequences. External-data presets read tiny files written here in the
standard formats.
"""

import json

import numpy as np
import pytest
from flax import nnx

from algornn.experiments import _train_lib as lib
from algornn.experiments._models import build_model, model_spec
from algornn.experiments.config import apply_overrides
from algornn.experiments.presets import get_preset, list_presets
from algornn.experiments.tasks import get_task
from tests.experiments._task_files import write_aan_tsv, write_cifar, write_imdb

pytestmark = pytest.mark.loose_promotion

_SMALL = {"n_train": 8, "n_val": 4, "n_test": 4}
SHRINK_TASK = {
    "listops": {**_SMALL, "min_length": 8, "max_length": 40, "cache_dir": False},
    "mqar": {**_SMALL, "seq_len": 32, "n_pairs": 2},
    "selective_copying": {**_SMALL, "seq_len": 32, "n_copy": 2},
    "copying": {**_SMALL, "seq_len": 32, "n_copy": 2},
    "induction": {**_SMALL, "seq_len": 32},
    "adding": {**_SMALL, "seq_len": 32},
    "pathfinder": {**_SMALL, "size": 32, "cache_dir": False},
    "pathx": {**_SMALL, "size": 32, "cache_dir": False},  # same code path as 128 px, 16x cheaper
    "irregular_sine": {**_SMALL, "seq_len": 16},
}


def _write_imdb(root):
    write_imdb(
        root,
        {
            (part, cls): [f"{part} {cls} review number {i}" for i in range(2)]
            for part in ("train", "test")
            for cls in ("pos", "neg")
        },
    )
    return {"data_dir": str(root), "seq_len": 32}


def _write_aan(root):
    for split in ("train", "eval", "test"):
        write_aan_tsv(
            root / f"new_aan_pairs.{split}.tsv",
            [(i % 2, f"a{i}", f"b{i}", f"doc one {i}", f"doc two {i}") for i in range(4)],
        )
    return {"data_dir": str(root), "seq_len": 32}


def _write_cifar(root):
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    write_cifar(
        root,
        {n: rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8) for n in names},
        {n: rng.integers(0, 10, 2) for n in names},
    )
    return {"data_dir": str(root)}


EXTERNAL = {"text": _write_imdb, "retrieval": _write_aan, "image": _write_cifar}


def shrink(name, tmp_path):
    config = get_preset(name)
    task = config.task.name
    if task in EXTERNAL:
        options = EXTERNAL[task](tmp_path)
    elif task in SHRINK_TASK:
        options = SHRINK_TASK[task]
    else:
        pytest.fail(f"preset {name!r}: no shrunken options for task {task!r} in this test")
    overrides = [
        "model.d_model=8",
        "model.n_layers=1",
        "model.retrieval_hidden=8",
        "train.batch_size=2",
        "train.steps=1",
        "train.devices=1",
        f"task.options={json.dumps(options)}",
    ]
    mixer_options = config.model.mixer_options
    if "d_state" in mixer_options:
        overrides.append(f"model.mixer_options.d_state={2 * mixer_options.get('blocks', 2)}")
    if "head_dim" in mixer_options:  # Mamba2: the head size must divide the shrunken inner width
        overrides.append("model.mixer_options.head_dim=4")
    return apply_overrides(config, overrides)


# The default run covers every task, mixer, head (pair / per-position / regression), norm and input kind at
# least once; the remaining LRA presets differ from these only in hyperparameters and run with ``-m slow``
# (each step is an XLA compile of a few seconds, which the CI time budget cannot take 25 times).
DEFAULT = {
    "demo",
    "listops_s4",
    "listops_s5",
    "text_s4d",
    "retrieval_s5",
    "image_s4",
    "pathfinder_s5",
    "pathx_s4d",
    "mqar_deltanet",
    "mqar_gated_deltanet",
    "mqar_delta_product",
    "mqar_mlstm",
    "mqar_linear_attention",
    "mqar_mamba2",
    "mqar_hawk",
    "selective_copying_deltanet",
    "induction_linear_attention",
    "copying_lru",
    "adding_lru",
    # irregular sampling (batch["dt"] through the trainer); the only presets of these four mixers
    "irregular_sine_lmu",
    "irregular_sine_lssl",
    "irregular_sine_hippo_rnn",
    "irregular_sine_selective_ssm",
}
PRESETS = [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in list_presets()]


def test_default_subset_covers_every_task_and_mixer():
    configs = [get_preset(n) for n in list_presets()]
    chosen = [get_preset(n) for n in DEFAULT]
    assert {c.task.name for c in chosen} == {c.task.name for c in configs}
    assert {c.model.mixer for c in chosen} == {c.model.mixer for c in configs}
    assert DEFAULT <= set(list_presets())


@pytest.mark.parametrize("name", PRESETS)
def test_one_training_step(name, tmp_path):
    config = shrink(name, tmp_path)
    task = get_task(config.task.name, **config.task.options)
    spec = model_spec(task)
    model = build_model(config, spec, rngs=nnx.Rngs(params=0, dropout=1))
    opt = lib.make_optimizer(model, config.optim, config.train.steps)
    mesh = lib.make_mesh(1)
    before = jax_params(model)
    batch = lib.DataStream(task, config.train.batch_size, seed=0).next()
    stacked = {k: v[None] for k, v in batch.items()}  # (k=1, B, ...)
    loss, acc, gnorm = lib.train_step(
        model,
        opt,
        lib.shard_batch(stacked, mesh, axis=1),
        np.int32(0),
        kind=spec["kind"],
        bf16=False,
        accumulate=1,
        seed=0,
    )
    assert np.isfinite(float(loss)) and np.isfinite(float(gnorm)) and float(gnorm) > 0
    assert 0.0 <= float(acc) <= 1.0
    after = jax_params(model)
    assert any(not np.array_equal(after[k], before[k]) for k in before)


def jax_params(model):
    return {"/".join(map(str, k)): np.array(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
