"""checkpoints/: Orbax save / restore / load, retention, incomplete and foreign directories, device counts.

Uses a small NNX model of its own (Linear + BatchNorm + Dropout + an ``ssm``-tagged parameter) so these
tests do not depend on ``layers``.
"""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from algornn import checkpoints
from algornn.checkpoints import CheckpointError, CheckpointManager

pytestmark = pytest.mark.loose_promotion

BUILDER = "tests.checkpoints.test_checkpoints:build_tiny"


class Tiny(nnx.Module):
    def __init__(self, d_in=3, d=8, *, rngs):
        self.log_dt = nnx.Param(jnp.linspace(-3.0, -1.0, d), tag="ssm")
        self.lin = nnx.Linear(d_in, d, rngs=rngs)
        self.bn = nnx.BatchNorm(d, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(d, 2, rngs=rngs)

    def __call__(self, x):  # (B, d_in) -> (B, 2)
        h = self.drop(self.bn(self.lin(x))) * jnp.exp(self.log_dt[...])
        return self.out(jnp.tanh(h))


def build_tiny(config_dict, spec):
    return Tiny(spec["d_in"], config_dict["d"], rngs=nnx.Rngs(config_dict["seed"])), config_dict


def _make(seed=0):
    model = Tiny(rngs=nnx.Rngs(seed))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    return model, opt


@nnx.jit
def _step(model, opt, x, y):
    def loss_fn(m):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(m(x), y))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss


def _data(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, 3)), jnp.float32), jnp.asarray(rng.integers(0, 2, n), jnp.int32)


META = {
    "config": {"d": 8, "seed": 0},
    "model_spec": {"d_in": 3},
    "builder": BUILDER,
    "data_position": {"epoch": 1, "step_in_epoch": 2},
}


def _params(obj):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(obj)))


def _trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_identical_logits_and_next_step(tmp_path):
    model, opt = _make()
    x, y = _data()
    for _ in range(3):
        _step(model, opt, x, y)
    with CheckpointManager(tmp_path / "ck") as mgr:  # a relative-looking Path is made absolute
        assert mgr.save(3, model=model, optimizer=opt, meta=META)
    # restore into abstract (eval_shape) targets built from a different seed
    new_model, new_opt = nnx.eval_shape(lambda: _make(seed=7))
    with CheckpointManager(tmp_path / "ck", create=False) as mgr:
        meta = mgr.restore(model=new_model, optimizer=new_opt)
    assert meta["step"] == 3 and meta["data_position"] == {"epoch": 1, "step_in_epoch": 2}
    _trees_equal(nnx.state(new_model), nnx.state(model))
    _trees_equal(nnx.state(new_opt), nnx.state(opt))
    model.eval(), new_model.eval()
    np.testing.assert_array_equal(np.asarray(new_model(x)), np.asarray(model(x)))
    model.train(), new_model.train()
    # the next step (dropout draws, Adam moments, BatchNorm stats) is identical
    l1, l2 = _step(model, opt, x, y), _step(new_model, new_opt, x, y)
    assert float(l1) == float(l2)
    _trees_equal(nnx.state(new_model), nnx.state(model))
    assert int(new_opt.step[...]) == 4


def test_retention_keeps_latest_and_best(tmp_path):
    model, opt = _make()
    with CheckpointManager(tmp_path, keep_latest=1, keep_best=1) as mgr:
        for step, acc in zip(range(1, 6), (0.5, 0.9, 0.4, 0.6, 0.3)):
            mgr.save(step, model=model, optimizer=opt, meta=META, metrics={"val_accuracy": acc})
        mgr.save(6, model=model, optimizer=opt, meta=META)  # periodic step without a metric
        mgr.wait()
        assert mgr.all_steps() == [2, 6]
        assert mgr.best_step() == 2 and mgr.latest_step() == 6


def test_load_rebuilds_from_stored_config(tmp_path):
    model, opt = _make()
    x, y = _data()
    _step(model, opt, x, y)
    with CheckpointManager(tmp_path / "run" / "checkpoints") as mgr:
        mgr.save(1, model=model, optimizer=opt, meta=META, metrics={"val_accuracy": 0.5})
    loaded, config = checkpoints.load(tmp_path / "run")  # a workdir resolves to workdir/checkpoints
    assert config == META["config"]
    model.eval()
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_incomplete_tmp_directory_is_ignored(tmp_path):
    model, opt = _make()
    ck = tmp_path / "ck"
    with CheckpointManager(ck) as mgr:
        mgr.save(2, model=model, optimizer=opt, meta=META)
    junk = ck / "5.orbax-checkpoint-tmp-1700000000000000"
    (junk / "model").mkdir(parents=True)
    (junk / "model" / "garbage").write_text("half written")
    with CheckpointManager(ck) as mgr:
        assert mgr.latest_step() == 2
        restored_model, restored_opt = nnx.eval_shape(_make)
        assert mgr.restore(model=restored_model, optimizer=restored_opt)["step"] == 2
        # saving the step that was interrupted works afterwards
        assert mgr.save(5, model=model, optimizer=opt, meta=META)
        mgr.wait()
        assert mgr.latest_step() == 5


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp, optax
    from flax import nnx
    from algornn.checkpoints import CheckpointManager
    class Big(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((4096, 4096), jnp.float32))  # 64 MiB: the async save is still running
    m = Big(); opt = nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param)
    mgr = CheckpointManager(sys.argv[1])
    mgr.save(1, model=m, optimizer=opt, meta={}); mgr.wait()
    mgr.save(2, model=m, optimizer=opt, meta={})
    os.kill(os.getpid(), signal.SIGKILL)  # killed while step 2 is being written
""")


def test_kill_during_save_leaves_last_complete_step(tmp_path):
    ck = tmp_path / "ck"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(ck)],
        capture_output=True,
        text=True,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with CheckpointManager(ck) as mgr:
        latest = mgr.latest_step()
    assert latest in (1, 2)  # 2 only if the write finished before the kill; never a partial step
    if latest == 1:
        assert not (ck / "2").exists()


def test_foreign_and_missing_directories_raise(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.load(tmp_path / "nope")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not an AlgoRNN checkpoint directory"):
        checkpoints.load(foreign)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        checkpoints.load(empty)
    partial = tmp_path / "partial"
    (partial / "3" / "model").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="missing"):
        CheckpointManager(partial)


def test_corrupted_checkpoint_raises(tmp_path):
    model, opt = _make()
    with CheckpointManager(tmp_path) as mgr:
        mgr.save(1, model=model, optimizer=opt, meta=META)
    for root, _, files in os.walk(tmp_path / "1" / "model"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage")
    target_model, target_opt = nnx.eval_shape(_make)
    with CheckpointManager(tmp_path) as mgr, pytest.raises(CheckpointError, match="cannot restore"):
        mgr.restore(model=target_model, optimizer=target_opt)
    (tmp_path / "1" / "meta" / "metadata").write_text("{not json")
    with pytest.raises(CheckpointError):
        checkpoints.load(tmp_path)


def test_foreign_meta_format_raises(tmp_path):
    model, opt = _make()
    with CheckpointManager(tmp_path) as mgr:
        mgr.save(1, model=model, optimizer=opt, meta=META)
    meta_dir = tmp_path / "1" / "meta"
    (meta_dir / "metadata").write_text('{"format": "something-else", "step": 1}')
    with pytest.raises(CheckpointError, match="not written by AlgoRNN"):
        checkpoints.load(tmp_path)


def test_restore_onto_other_device_counts(tmp_path):
    # The trainer's own meshes (Auto axes, experiments._train_lib.make_mesh): with Explicit axes, jax >= 0.11
    # rejects optax's integer-label scatter on a batch-sharded loss.
    from algornn.experiments import _train_lib as lib

    mesh4 = lib.make_mesh(4)
    model, opt = _make()
    x, y = _data()
    repl = NamedSharding(mesh4, PartitionSpec())
    nnx.update(model, jax.device_put(nnx.state(model), repl))
    nnx.update(opt, jax.device_put(nnx.state(opt), repl))
    _step(
        model,
        opt,
        jax.device_put(x, NamedSharding(mesh4, PartitionSpec("data"))),
        jax.device_put(y, NamedSharding(mesh4, PartitionSpec("data"))),
    )
    with CheckpointManager(tmp_path) as mgr:
        mgr.save(1, model=model, optimizer=opt, meta=META)
    mesh2 = lib.make_mesh(2)
    for mesh, n_dev in ((None, 1), (mesh2, 2), (mesh4, 4)):
        target_model, target_opt = nnx.eval_shape(_make)
        with CheckpointManager(tmp_path) as mgr:
            mgr.restore(model=target_model, optimizer=target_opt, mesh=mesh)
        _trees_equal(nnx.state(target_model), nnx.state(model))
        leaf = jax.tree.leaves(nnx.state(target_model, nnx.Param))[0]
        assert len(leaf.sharding.device_set) == n_dev


def test_inference_only_checkpoint_round_trip(tmp_path):
    # a trained model saved without its optimizer: model and meta on disk, no optimizer item
    model, opt = _make()
    x, y = _data()
    for _ in range(2):
        _step(model, opt, x, y)
    with CheckpointManager(tmp_path / "run" / "checkpoints") as mgr:
        assert mgr.save(2, model=model, meta=META, metrics={"val_accuracy": 0.5})
    step_dir = tmp_path / "run" / "checkpoints" / "2"
    items = {p.name for p in step_dir.iterdir() if p.is_dir()}
    assert "model" in items and "meta" in items and "optimizer" not in items

    # restore into an abstract model alone (the directory passes the completeness check without 'optimizer')
    target = nnx.eval_shape(lambda: Tiny(rngs=nnx.Rngs(7)))
    with CheckpointManager(tmp_path / "run" / "checkpoints", create=False) as mgr:
        meta = mgr.restore(model=target)
        assert meta["step"] == 2 and meta["has_optimizer"] is False
        # asking for the optimizer state it does not hold says so
        with pytest.raises(CheckpointError, match="inference-only checkpoint"):
            mgr.restore(model=nnx.eval_shape(lambda: Tiny(rngs=nnx.Rngs(7))), optimizer=nnx.eval_shape(_make)[1])
    _trees_equal(nnx.state(target), nnx.state(model))

    # checkpoints.load rebuilds it from the stored builder, in eval mode, with the same outputs
    loaded, config = checkpoints.load(tmp_path / "run")
    assert config == META["config"]
    model.eval()
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_evaluate_cli_on_an_empty_directory_prints_one_error_line(tmp_path):
    """A read-only manager starts no Orbax clean-up thread: before, a process exiting right after the error
    interrupted that thread about one run in three, printing a 40-line traceback at interpreter shutdown."""
    import subprocess
    import sys

    (tmp_path / "empty").mkdir()
    for _ in range(4):
        res = subprocess.run(
            [sys.executable, "-m", "algornn.experiments.evaluate", "--checkpoint", str(tmp_path / "empty")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 1
        assert res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr
        assert res.stderr.startswith("error: no complete checkpoint") and "algornn-train" in res.stderr
