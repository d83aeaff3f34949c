"""experiments.trainer / _train_lib: optimizer groups, schedule, accumulation, devices, resume, NaN, evaluate.

Runs are tiny (d_model 8, one layer, ListOps of length < 40) so the whole loop — checkpoints, evaluation,
the test pass from the best checkpoint, the plot — runs in seconds.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algornn import checkpoints
from algornn.experiments import _train_lib as lib
from algornn.experiments._models import build_model, model_spec, param_groups
from algornn.experiments.config import OptimConfig, apply_overrides
from algornn.experiments.presets import get_preset
from algornn.experiments.tasks import get_task
from algornn.experiments.trainer import train_and_evaluate
from tests._utils import assert_close

pytestmark = pytest.mark.loose_promotion

MIXER = "selective_ssm"
TINY = [
    f"model.mixer={MIXER}",
    "model.mixer_options={}",
    "model.d_model=8",
    "model.n_layers=1",
    'task.options={"n_train": 32, "n_val": 12, "n_test": 12, "min_length": 8, "max_length": 40, "cache_dir": false}',
    "train.steps=6",
    "train.batch_size=8",
    "train.eval_every=3",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "train.progress=false",
    "train.eval_batch_size=8",
    "optim.warmup_steps=2",
]


def tiny(*extra):
    return apply_overrides(get_preset("demo"), TINY + list(extra))


def _setup(config, devices=1):
    task = get_task(config.task.name, **config.task.options)
    spec = model_spec(task)
    model = build_model(config, spec, rngs=nnx.Rngs(params=0, dropout=1))
    opt = lib.make_optimizer(model, config.optim, config.train.steps)
    mesh = lib.make_mesh(devices)
    lib.replicate(model, mesh)
    lib.replicate(opt, mesh)
    return task, spec, model, opt, mesh


def _run_steps(model, opt, task, mesh, *, steps, batch_size, accumulate=1, bf16=False):
    stream = lib.DataStream(task, batch_size, seed=0)
    out = []
    for step in range(steps):
        batches = [stream.next() for _ in range(accumulate)]
        stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
        loss, acc, gnorm = lib.train_step(
            model,
            opt,
            lib.shard_batch(stacked, mesh, axis=1),
            np.int32(step),
            kind=task.kind,
            bf16=bf16,
            accumulate=accumulate,
            seed=0,
        )
        out.append(float(loss))
    return out


def _params(model):
    return {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# ----------------------------------------------------------------------------------------------------
# optimizer


class _Tagged(nnx.Module):
    def __init__(self, rngs):
        self.log_dt = nnx.Param(jnp.full((4,), -2.0), tag="ssm")
        self.lin = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        return self.lin(x * jnp.exp(self.log_dt[...]))


def test_param_groups_and_group_learning_rates():
    model = _Tagged(nnx.Rngs(0))
    groups = nnx.to_flat_state(param_groups(model))
    assert {"/".join(k): v for k, v in groups} == {"log_dt": "ssm", "lin/kernel": "decay", "lin/bias": "no_decay"}
    optim = OptimConfig(lr=1e-2, ssm_lr=1e-3, weight_decay=0.5, schedule="constant", grad_clip=0.0)
    opt = lib.make_optimizer(model, optim, total_steps=10)
    before = _params(model)
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 4)))))(model)
    opt.update(model, grads)
    after = _params(model)
    # Adam's first step moves every coordinate by lr * g/|g| (plus lr * wd * p for the decayed group only)
    np.testing.assert_allclose(np.abs(after["log_dt"] - before["log_dt"]), 1e-3, rtol=1e-3)
    np.testing.assert_allclose(np.abs(after["lin/bias"] - before["lin/bias"]), 1e-2, rtol=1e-3)
    k0, k1 = before["lin/kernel"], after["lin/kernel"]
    g = np.asarray(grads["lin"]["kernel"][...])
    np.testing.assert_allclose(k1, k0 - 1e-2 * np.sign(g) - 1e-2 * 0.5 * k0, rtol=1e-4, atol=1e-7)


def test_warmup_cosine_schedule_matches_closed_form():
    optim = OptimConfig(lr=2.0, warmup_steps=4, end_lr_ratio=0.1, schedule="cosine")
    sched = lib.make_schedule(optim.lr, optim, total_steps=14)
    for step in range(16):
        if step < 4:
            want = 2.0 * (step + 1) / 4
        else:
            p = min((step - 4) / 10, 1.0)
            want = 2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
        assert abs(float(sched(step)) - want) < 1e-6, step
    const = lib.make_schedule(1.0, OptimConfig(warmup_steps=0, schedule="constant"), total_steps=5)
    assert [float(const(s)) for s in range(5)] == [1.0] * 5


# ----------------------------------------------------------------------------------------------------
# steps: accumulation, devices, bfloat16


def test_gradient_accumulation_equals_big_batch():
    config = tiny("optim.grad_clip=0.5")
    task, _, m1, o1, mesh = _setup(config)
    _, _, m2, o2, _ = _setup(config)
    # batches of 8 from the per-epoch permutation are two consecutive batches of 4
    l1 = _run_steps(m1, o1, task, mesh, steps=2, batch_size=8)
    l2 = _run_steps(m2, o2, task, mesh, steps=2, batch_size=4, accumulate=2)
    assert_close(l2, l1, rtol=1e-5, name="loss")
    p1, p2 = _params(m1), _params(m2)
    for k in p1:
        assert_close(p2[k], p1[k], rtol=1e-5, name=k)


def test_one_vs_four_devices_equal():
    config = tiny()
    task, _, m1, o1, mesh1 = _setup(config, devices=1)
    _, _, m4, o4, mesh4 = _setup(config, devices=4)
    l1 = _run_steps(m1, o1, task, mesh1, steps=3, batch_size=8)
    l4 = _run_steps(m4, o4, task, mesh4, steps=3, batch_size=8)
    assert_close(l4, l1, rtol=1e-5, name="loss")
    p1, p4 = _params(m1), _params(m4)
    for k in p1:
        assert_close(p4[k], p1[k], rtol=1e-5, name=k)
    assert len(jax.tree.leaves(nnx.state(m4))[0].sharding.device_set) == 4
    e1 = lib.evaluate(m1, task, "val", batch_size=5, mesh=mesh1, kind=task.kind)  # 12 = 5 + 5 + 2 (+ padding)
    e4 = lib.evaluate(m4, task, "val", batch_size=5, mesh=mesh4, kind=task.kind)
    assert e1["count"] == e4["count"] == 12
    assert_close(e4["loss"], e1["loss"], rtol=1e-5)
    assert e4["accuracy"] == e1["accuracy"]


def test_bfloat16_step_close_to_float32():
    config = tiny()
    task, spec, model, opt, mesh = _setup(config)
    batch = lib.shard_batch(lib.clean_batch(next(task.batches("train", 8, seed=0))), mesh)
    loss32, _, count = lib.eval_step(model, batch, kind=task.kind, bf16=False)  # float32 forward, same params
    l16 = _run_steps(model, opt, task, mesh, steps=1, batch_size=8, bf16=True)  # loss before the update
    assert np.isfinite(l16).all()
    assert_close(l16[0], float(loss32) / float(count), rtol=2e-2, name="bf16 loss")
    assert all(v.dtype == np.float32 for v in _params(model).values())  # master weights stay float32


# ----------------------------------------------------------------------------------------------------
# the loop: resume, NaN, evaluate


def _records(workdir, split):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, monkeypatch, capsys):
    config = tiny("train.devices=0")  # all 4 test devices; 32 examples / 8 = 4 batches per epoch
    straight = train_and_evaluate(config, tmp_path / "a")
    assert os.path.isfile(tmp_path / "a" / "curves.png") and os.path.isfile(tmp_path / "a" / "results.json")

    real_step, calls = lib.train_step, []

    def dying_step(*args, **kwargs):  # the process "dies" during step 5, after checkpoints 2, 3 and 4
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(lib, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, tmp_path / "b")
    monkeypatch.setattr(lib, "train_step", real_step)
    assert max(checkpoints.CheckpointManager(tmp_path / "b" / "checkpoints").all_steps()) == 4
    resumed = train_and_evaluate(config, tmp_path / "b")

    assert resumed["final_val"] == straight["final_val"]
    assert resumed["test_from_best_checkpoint"] == straight["test_from_best_checkpoint"]
    assert resumed["best_step"] == straight["best_step"]
    assert [r["loss"] for r in _records(tmp_path / "b", "train")] == [
        r["loss"] for r in _records(tmp_path / "a", "train")
    ]
    ma, _ = checkpoints.load(tmp_path / "a", step="latest")
    mb, _ = checkpoints.load(tmp_path / "b", step="latest")
    pa, pb = _params(ma), _params(mb)
    for k in pa:
        np.testing.assert_array_equal(pb[k], pa[k], err_msg=k)

    # evaluate CLI on the fresh checkpoint reproduces the trainer's test metrics
    from algornn.experiments import evaluate

    out = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(tmp_path / "b"), "--split", "test", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["accuracy"] == resumed["test_from_best_checkpoint"]["accuracy"]
    assert metrics["loss"] == pytest.approx(resumed["test_from_best_checkpoint"]["loss"], rel=1e-6)
    # a data directory without the task's files is one clean error, not a traceback
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(tmp_path / "b"), "--data-dir", str(tmp_path / "nowhere")]) == 1
    assert "error: task 'listops': data_dir=" in capsys.readouterr().err


def test_evaluate_cli_bad_directory(tmp_path, capsys):
    from algornn.experiments import evaluate

    (tmp_path / "junk.txt").write_text("x")
    assert evaluate.main(["--checkpoint", str(tmp_path)]) == 1
    assert "not an AlgoRNN checkpoint directory" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_non_finite_loss_stops_and_saves_nothing_bad(tmp_path):
    config = tiny(
        "optim.lr=1e30",
        "optim.ssm_lr=1e30",
        "optim.grad_clip=0",
        "optim.warmup_steps=0",
        "train.checkpoint_every=1",
        "train.eval_every=100",
        "train.steps=6",
    )
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step (\d+)") as exc:
        train_and_evaluate(config, tmp_path)
    bad_step = int(exc.value.args[0].split(" at step ")[1].split(";")[0])
    steps = checkpoints.CheckpointManager(tmp_path / "checkpoints").all_steps()
    assert steps and max(steps) == bad_step - 1
    model, _ = checkpoints.load(tmp_path, step="latest")
    assert all(np.isfinite(v).all() for v in _params(model).values())


def test_stop_at_accuracy_ends_the_run_and_a_rerun_keeps_it_finished(tmp_path):
    base = ["train.eval_every=100", "train.checkpoint_every=0", "train.devices=1"]
    straight = train_and_evaluate(tiny(*base), tmp_path / "full")
    accs = [r["accuracy"] for r in _records(tmp_path / "full", "train")]
    target = max(accs[:-1])  # reached before the last step, so stopping there is early
    assert straight["steps"] == 6 and not straight["stopped_early"] and target > 0, accs
    stop = accs.index(target) + 1  # log_every = 1: record i is step i + 1

    config = tiny(*base, f"train.stop_at_accuracy={target}")
    run = train_and_evaluate(config, tmp_path / "stop")
    assert run["stopped_early"] and run["steps"] == stop and run["best_step"] == stop
    assert [r["loss"] for r in _records(tmp_path / "stop", "train")] == [
        r["loss"] for r in _records(tmp_path / "full", "train")
    ][:stop]
    assert [r["step"] for r in _records(tmp_path / "stop", "val")] == [stop]
    assert run["test_from_best_checkpoint"]["count"] == 12
    assert checkpoints.CheckpointManager(tmp_path / "stop" / "checkpoints").all_steps() == [stop]
    # a rerun (or a re-evaluation) treats the stopped run as finished: no step is trained after it
    again = train_and_evaluate(config, tmp_path / "stop")
    assert again["already_complete"] and again["steps"] == stop
    redo = train_and_evaluate(config, tmp_path / "stop", reevaluate=True)
    assert redo["steps"] == stop and redo["final_val"] == run["final_val"]
    assert checkpoints.CheckpointManager(tmp_path / "stop" / "checkpoints").all_steps() == [stop]


def test_resume_with_different_model_config_is_refused(tmp_path):
    # plant a checkpoint of a wider model, as an earlier run with other settings would have left
    other = tiny("model.d_model=16")
    task, spec, model, opt, _ = _setup(other)
    with checkpoints.CheckpointManager(tmp_path / "checkpoints") as mgr:
        mgr.save(2, model=model, optimizer=opt, meta={"config": other.to_dict(), "model_spec": spec})
    with pytest.raises(ValueError, match="different model config"):
        train_and_evaluate(tiny("train.steps=4"), tmp_path)


# ----------------------------------------------------------------------------------------------------
# sequence parallelism


def test_sequence_parallel_training_equals_data_parallel(tmp_path):
    """``train.sequence_parallel=2`` on 4 devices (data 2 × seq 2, S4D's scans sharded over time) trains and
    evaluates as the plain 4-device data-parallel run."""
    base = ("model.mixer=s4d", 'model.mixer_options={"mode": "scan", "d_state": 4}', "train.devices=4")
    base += ("train.steps=3", "train.eval_every=3", "train.test_at_end=false")
    r1 = train_and_evaluate(tiny(*base), tmp_path / "dp")
    r2 = train_and_evaluate(tiny(*base, "train.sequence_parallel=2"), tmp_path / "sp")
    read = lambda name: [json.loads(x) for x in open(tmp_path / name / "metrics.jsonl")]  # noqa: E731
    m1, m2 = read("dp"), read("sp")
    assert [m["step"] for m in m1] == [m["step"] for m in m2]
    assert_close([m["loss"] for m in m2], [m["loss"] for m in m1], rtol=1e-5, name="losses")
    assert r2["final_val"]["accuracy"] == r1["final_val"]["accuracy"]
    model, config = checkpoints.load(tmp_path / "sp" / "checkpoints")  # one device, no mesh: the scans run unsharded
    assert config.train.sequence_parallel == 2 and model.blocks[0].mixer.options.sequence_axis == "seq"


def test_sequence_parallel_refusals(tmp_path):
    with pytest.raises(ValueError, match=r"train.sequence_parallel=2 needs a mixer .* model.mixer='selective_ssm'"):
        train_and_evaluate(tiny("train.sequence_parallel=2", "train.devices=4"), tmp_path / "a")
    with pytest.raises(ValueError, match=r"train.sequence_parallel: 3 does not divide the 4 devices"):
        train_and_evaluate(tiny("train.sequence_parallel=3", "train.devices=4"), tmp_path / "b")
