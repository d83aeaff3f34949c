"""Multi-process data parallel (docs/distributed.md): 2 processes x 2 CPU devices train as 1 process x 4 does.

``algornn-train`` is started twice on 127.0.0.1 (a free port; gloo CPU collectives; ``XLA_FLAGS`` forcing two
host devices per process), while this process trains the same config on its four devices. The metrics must
agree to float32 rounding: both runs see the same global batches on a 4-device mesh in the same order and
compute the same per-device partial sums; only the gradient all-reduce differs (gloo across processes, XLA's
in-process reduction in one), which can reorder a float32 sum and move the last bit (observed: at most 2e-7
relative). ``RTOL = 1e-5`` leaves room for that rounding to grow over the few Adam steps and still catches any
real difference (a row fed twice or missed changes the loss at the 1e-2 level). Then the 2-process checkpoint
is evaluated, and its model and optimizer restored, in this single process on 1 device.

The processes run in their own process groups; a failure, an early exit of either, or ``TIMEOUT_S`` kills both
groups (``finally``), so a failing test leaves nothing behind.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from algornn import checkpoints
from algornn.experiments import _train_lib as lib
from algornn.experiments import distributed
from algornn.experiments._models import build_model, model_spec
from algornn.experiments.config import apply_overrides
from algornn.experiments.evaluate import evaluate_checkpoint
from algornn.experiments.presets import get_preset
from algornn.experiments.tasks import get_task
from algornn.experiments.trainer import train_and_evaluate
from tests._utils import assert_close

pytestmark = pytest.mark.loose_promotion

RTOL = 1e-5
TIMEOUT_S = 420  # the two processes compile the same steps on 2 shared cores; ~1 min when the machine is idle
TINY = [
    "model.mixer=selective_ssm",
    "model.mixer_options={}",
    "model.d_model=8",
    "model.n_layers=1",
    'task.options={"n_train": 32, "n_val": 12, "n_test": 12, "min_length": 8, "max_length": 40, "cache_dir": false}',
    "train.steps=4",
    "train.batch_size=8",
    "train.eval_every=2",
    "train.checkpoint_every=0",
    "train.log_every=1",
    "train.progress=false",
    "train.eval_batch_size=8",
    "train.keep_latest=2",
    "optim.warmup_steps=2",
]
_DIST_ENV = (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV and not k.startswith("SLURM_")}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",  # the default of jax >= 0.5; named here on purpose
    )
    return env


class _Processes:
    """``algornn-train`` in ``n`` processes of their own process groups; ``close`` kills whatever still runs."""

    def __init__(self, workdir, *, n: int, start: int | None = None, log_dir, overrides=TINY):
        port = _free_port()
        self.logs = [log_dir / f"process{i}.log" for i in range(n)]
        self.procs = []
        for i in range(n if start is None else start):
            cmd = [sys.executable, "-m", "algornn.experiments.train", "--workdir", str(workdir)]
            cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i)]
            with open(self.logs[i], "w") as log:
                self.procs.append(
                    subprocess.Popen(
                        [*cmd, *overrides],
                        cwd=log_dir,
                        env=_child_env(2),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # own process group: killpg reaches all it started
                    )
                )

    def output(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def _report(self, what: str) -> str:
        tails = "\n".join(f"--- process {i} ---\n{self.output(i)[-3000:]}" for i in range(len(self.procs)))
        return f"{what}\n{tails}"

    def wait(self, timeout_s: float):
        """Wait for every process to exit 0; the first failure or the timeout raises (``close`` still needed)."""
        deadline = time.monotonic() + timeout_s
        while True:
            codes = [p.poll() for p in self.procs]
            bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                raise AssertionError(self._report(f"process(es) exited with status {bad}"))
            if all(c == 0 for c in codes):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(self._report(f"still running after {timeout_s} s: exit codes {codes}"))
            time.sleep(0.2)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait()


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _restored(config, directory):
    """Model and optimizer of the latest step of ``directory``, restored onto one device of this process."""
    spec = model_spec(get_task(config.task.name, **config.task.options))
    model = build_model(config, spec, rngs=nnx.Rngs(params=123, dropout=124))  # other values: all overwritten
    opt = lib.make_optimizer(model, config.optim, config.train.steps)
    with checkpoints.CheckpointManager(directory, create=False) as manager:
        manager.restore(model=model, optimizer=opt, mesh=lib.make_mesh(1))
    return nnx.state(model), nnx.state(opt)


def test_two_processes_equal_one_process_on_four_devices(tmp_path):
    config = apply_overrides(get_preset("demo"), TINY)
    multi, single = tmp_path / "two_processes", tmp_path / "one_process"
    started = time.monotonic()
    procs = _Processes(multi, n=2, log_dir=tmp_path)
    try:
        assert len(jax.devices()) == 4
        ref = train_and_evaluate(config, single)  # meanwhile, here: 1 process, 4 devices
        procs.wait(TIMEOUT_S - (time.monotonic() - started))
    finally:
        procs.close()
    out0, out1 = procs.output(0), procs.output(1)
    assert "done: 4 steps" in out0 and "test accuracy" in out0
    assert "done:" not in out1 and "step 2:" not in out1  # process 1 prints nothing of the run

    # process 0 wrote one metrics log; it matches the single-process run record by record
    got, want = _records(multi), _records(single)
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
    assert [r["split"] for r in want].count("train") == 4 and [r["split"] for r in want].count("val") == 2
    for g, w in zip(got, want):
        where = f"step {w['step']} {w['split']}"
        for key in ("loss", "grad_norm", "lr"):
            if key in w:
                assert_close(g[key], w[key], rtol=RTOL, name=f"{where} {key}")
        assert g["accuracy"] == w["accuracy"], where
    with open(multi / "results.json") as f:
        results = json.load(f)
    assert results["devices"] == ref["devices"] == 4 and results["processes"] == 2 and ref["processes"] == 1
    assert results["best_step"] == ref["best_step"]
    for split in ("final_val", "test_from_best_checkpoint"):
        assert results[split]["count"] == ref[split]["count"] == 12
        assert results[split]["accuracy"] == ref[split]["accuracy"], split
        assert_close(results[split]["loss"], ref[split]["loss"], rtol=RTOL, name=split)

    # the 2-process checkpoint (written by both processes together) in this one process, on one device
    ckpt = multi / "checkpoints"
    assert sorted(int(s) for s in os.listdir(ckpt) if s.isdigit()) == [2, 4]
    evaluated = evaluate_checkpoint(multi, split="test", devices=1)
    assert evaluated["step"] == results["best_step"] and evaluated["count"] == 12
    assert evaluated["accuracy"] == results["test_from_best_checkpoint"]["accuracy"]
    assert_close(evaluated["loss"], results["test_from_best_checkpoint"]["loss"], rtol=RTOL, name="test loss")
    (m_got, o_got), (m_want, o_want) = _restored(config, ckpt), _restored(config, single / "checkpoints")
    for name, a, b in (("model", m_got, m_want), ("optimizer", o_got, o_want)):
        leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
        assert len(leaves_a) == len(leaves_b) > 0
        for x, y in zip(leaves_a, leaves_b):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                x, y = jax.random.key_data(x), jax.random.key_data(y)
            assert x.sharding.device_set == {jax.devices()[0]}
            if jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
                assert_close(np.asarray(x), np.asarray(y), rtol=RTOL, name=name)
            else:  # step counts, RNG key data and counters
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


def test_a_missing_process_times_out_and_leaves_nothing_running(tmp_path):
    # Only process 0 of 2 is started, so it can never finish (it would wait at jax.distributed.initialize
    # for process 1): wait() times out, and close() kills its process group, whatever it was doing.
    procs = _Processes(tmp_path / "run", n=2, start=1, log_dir=tmp_path)
    try:
        with pytest.raises(TimeoutError, match="still running"):
            procs.wait(3.0)
    finally:
        procs.close()
    pid = procs.procs[0].pid
    assert procs.procs[0].returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no process of its group is left


def test_initialize_names_what_is_missing_or_malformed(monkeypatch, capsys):
    for name in _DIST_ENV:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.requested()
    assert distributed.requested(num_processes=2) and distributed.requested(auto=True)
    with pytest.raises(ValueError, match=r"missing: --num-processes \(or JAX_NUM_PROCESSES\), --process-id"):
        distributed.initialize("127.0.0.1:1234")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "1")
    assert distributed.requested()
    with pytest.raises(ValueError, match=r"missing: --coordinator \(or JAX_COORDINATOR_ADDRESS\)\."):
        distributed.initialize()
    with pytest.raises(ValueError, match="expected 0 <= process_id < num_processes=2, got 2"):
        distributed.initialize("127.0.0.1:1234", process_id=2)
    with pytest.raises(ValueError, match="expected HOST:PORT .* got 'localhost'"):
        distributed.initialize("localhost")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        distributed.initialize("127.0.0.1:1234")
    # the command line: one usage error (status 2) naming the missing flag, before any device is touched
    from algornn.experiments import train

    monkeypatch.delenv(distributed.ENV_NUM_PROCESSES)
    with pytest.raises(SystemExit) as exc:
        train.main(["--coordinator", "127.0.0.1:1234", "--process-id", "0", "train.steps=1"])
    assert exc.value.code == 2
    assert "missing: --num-processes (or JAX_NUM_PROCESSES)." in capsys.readouterr().err
    assert not jax.distributed.is_initialized()
