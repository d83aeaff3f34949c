"""The one-command GPU check (experiments/benchmarks/gpu_check.py) on the CPU: its dry run end to end, the kernel
checks' error measure, failures, errors and guards, the supervisor's handling of crashed, hung and late workers
(with a stand-in worker), the refusal to run without a GPU, and CUDA lowering of every kernel case."""

import json
import math
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algornn.scan_kernels as sk
from algornn.experiments.benchmarks import gpu_check as gc
from algornn.scan_kernels._common import backend as _backend
from tests.scan_kernels.test_pallas_scan import lower_for_cuda


def _case(key):
    return next(c for c in gc.KERNEL_CASES if c.key == key)


# ------------------------------------------------------------------------------------------- end to end
def _check_outputs(out, keys, *, dry=True):
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]  # nothing else, no .tmp
    rec = json.loads((out / "gpu_check.json").read_text())
    assert rec["tool"] == "gpu_check" and rec["dry_run"] is dry and rec["complete"] is True
    assert rec["device"]["platform"] == "cpu" and rec["device"]["pallas_interpret"] is True
    assert rec["device"]["jax_version"] == rec["jax_version"] == jax.__version__
    assert rec["timestamp"] and rec["command"].startswith(f"python -m {gc.MODULE} ")
    got = {k: r for sec in rec["sections"].values() for k, r in sec["items"].items()}
    assert sorted(got) == sorted(keys)
    for name, sec in rec["sections"].items():
        assert sec["wall_s"] > 0 and sec["budget_s"] == gc.DRY_BUDGET_S, name
    md = (out / "gpu_check.md").read_text()
    return rec, got, md


def test_dry_run_end_to_end(tmp_path):
    """An item of each section but fast_weights (whose dry-run items compile for ~20 s each; the slow test runs
    them, test_fast_weights_section its glue) through the real command, parent and worker process: all pass, one
    JSON and one markdown summary."""
    keys = ["kernels/linear_scan.ragged.f32", "scan/linear_scan", "selective_scan/xla", "layers/s4d"]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", gc.MODULE, "--dry-run", "--out", str(out), "--only", ",".join(keys)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec, got, md = _check_outputs(out, keys)
    assert rec["ok"] is True and rec["counts"] == {"pass": 1, "ok": 3}
    k = got["kernels/linear_scan.ragged.f32"]
    assert k["status"] == "pass" and k["interpret"] is True and k["triton_calls"] == {"fwd": 0, "grad": 0}
    assert 0 < k["fwd_rel"] <= k["tolerance"] and 0 < k["grad_rel"] <= k["tolerance"]
    assert set(k["errors"]) == {"out0", "da", "db", "dh0"}
    rows = got["scan/linear_scan"]["rows"]
    assert {r["variant"] for r in rows} >= set(gc.SCAN_VARIANTS)
    assert all(r["copy_ms"] > 0 and r["fwd_ms"] > 0 and r["copy_GBps"] > 0 for r in rows)
    ss = got["selective_scan/xla"]["rows"][0]
    assert ss["fwd_ms"] > 0 and ss["fwdbwd_ms"] > 0 and ss["states_bytes"] == 1 * 40 * 8 * 4 * 4
    assert got["layers/s4d"]["rows"][0]["mixer"] == "s4d"
    for title in ("## Sections", "## Kernels", "## Scan", "## Selective scan", "## Layers"):
        assert title in md
    assert "| linear_scan.ragged.f32 | B=2 L=50 D=13 | pass |" in md
    assert "[gpu_check] kernels/linear_scan.ragged.f32: PASS" in proc.stdout


def test_fast_weights_section(monkeypatch):
    """The section passes its shape and dtype to the fast-weight benchmark's ``measure`` (stubbed here: timing is
    the slow test's business) for each method, and skips with the guard's reason an op the checkout lacks."""
    from algornn.experiments.benchmarks import fast_weights

    calls = []

    def fake_measure(op, method, L, reps, *, dims, dtype):
        calls.append((op, method, L, reps, dims, jnp.dtype(dtype).name))
        return {"op": op, "method": method, "L": L, "fwd_ms": 1.0}

    monkeypatch.setattr(fast_weights, "measure", fake_measure)
    r = gc.bench_fast_weights("delta_rule", dry=False)
    assert r["status"] == "ok" and calls == [
        ("delta_rule", m, 16384, 3, (2, 16, 128, 128), "bfloat16") for m in ("xla", "pallas")
    ]
    assert r["rows"][1] == {
        "op": "delta_rule",
        "method": "pallas",
        "fwd_ms": 1.0,
        **gc.FAST_WEIGHTS_SHAPE[False],
        "dtype": "bfloat16",
        "chunk_size": 64,
    }
    for op in fast_weights.OPS:  # every op of the benchmark's registry is measured, or skipped with a reason
        calls.clear()
        r = gc.bench_fast_weights(op, dry=True)
        reason = gc._fast_weights_guard(op)
        assert (r["status"], r.get("reason")) == (("skip", reason) if reason else ("ok", None))
        assert len(calls) == (0 if reason else 2)
    monkeypatch.delattr(sk, "linear_attention")
    assert gc.bench_fast_weights("linear_attention", dry=True) == {
        "status": "skip",
        "reason": "algornn.scan_kernels has no linear_attention in this checkout",
    }
    try:  # the per-key row is skipped exactly when delta_rule rejects a per-key decay
        q = jnp.zeros((1, 4, 2, 8))
        sk.delta_rule(q, q, q, jnp.zeros((1, 4, 2)), log_decay=jnp.zeros((1, 4, 2, 8)), backend="xla")
        assert gc._fast_weights_guard("delta_rule_key") is None
    except ValueError:
        assert "log_decay" in gc._fast_weights_guard("delta_rule_key")


@pytest.mark.slow
def test_full_dry_run(tmp_path):
    """Every item of every section (minutes on a loaded 2-core machine)."""
    out = tmp_path / "out"
    assert gc.main(["--dry-run", "--out", str(out)]) == 0
    rec, got, _ = _check_outputs(out, [it.key for it in gc.plan(True)])
    assert all(r["status"] in ("pass", "ok", "skip") for r in got.values())
    assert all(r["status"] == "pass" for k, r in got.items() if k.startswith("kernels/") and r["status"] != "skip")


# ------------------------------------------------------------------------------------------- kernel checks
def test_error_measure():
    e = np.array([[1.0, -4.0], [2.0, 0.5]])
    assert gc._errors(e + [[0.0, 0.2], [0.0, 0.0]], e) == pytest.approx((0.2, 0.05))
    assert gc._errors(e, e) == (0.0, 0.0)
    assert gc._errors(np.zeros(3), np.zeros(3)) == (0.0, 0.0)
    assert gc._errors(np.ones(3), np.zeros(3)) == (1.0, math.inf)
    assert gc._errors(np.array([1.0, np.nan]), np.array([1.0, 2.0])) == (None, None)
    with pytest.raises(ValueError, match=r"shape \(3,\) differs from the reference's \(2,\)"):
        gc._errors(np.ones(3), np.ones(2))
    assert gc._worst({"a": (1.0, 0.1), "b": (None, None), "c": (2.0, 0.5)})[0] == "b"


def test_a_wrong_result_fails_and_an_exception_is_an_error(monkeypatch):
    """The check can fail: a float64 loop off by 1e-3 of the output's scale is a failure naming the output; an
    exception inside a case is recorded with its message, and the function returns."""
    case = _case("kernels/dense_linear_scan.shared_A.f32")
    spec = gc.OP_SPECS[case.op]
    shift = lambda h: h + jax.lax.stop_gradient(1e-3 * jnp.max(jnp.abs(h)))  # noqa: E731  (gradients unchanged)
    off = lambda o, A, b, h0: tuple(shift(h) for h in spec.loop(o, A, b, h0))  # noqa: E731
    monkeypatch.setitem(gc.OP_SPECS, case.op, gc.OpSpec(spec.inputs, spec.call, off))
    r = gc.run_kernel_case(case, dry=True)
    assert r["status"] == "fail" and r["reason"].endswith("in out0")
    assert r["fwd_rel"] == pytest.approx(1e-3, rel=1e-2) and r["grad_rel"] < 1e-5

    def boom(*a):
        raise RuntimeError("triton said no")

    monkeypatch.setitem(gc.OP_SPECS, case.op, gc.OpSpec(spec.inputs, boom, spec.loop))
    r = gc.run_kernel_case(case, dry=True)
    assert r["status"] == "error" and r["reason"] == "RuntimeError: triton said no" and r["wall_s"] >= 0


def test_guards(monkeypatch):
    case = _case("kernels/mlstm.gates.f32")
    monkeypatch.delattr(sk, "mlstm", raising=False)
    r = gc.run_kernel_case(case, dry=True)
    assert r["status"] == "skip" and r["reason"] == "algornn.scan_kernels has no mlstm in this checkout"
    monkeypatch.setattr(sk, "mlstm", object(), raising=False)
    assert gc.OP_SPECS["mlstm"].guard(case) is None
    assert gc._fast_weights_guard("mlstm") is None
    monkeypatch.delattr(sk, "mlstm")
    assert "no mlstm" in gc.bench_fast_weights("mlstm", dry=True)["reason"]
    # the per-key guard reports delta_rule's own error, and only a log_decay error
    q = jnp.zeros((1, 4, 2, 8))
    try:
        sk.delta_rule(q, q, q, jnp.zeros((1, 4, 2)), log_decay=jnp.zeros((1, 4, 2, 8)), backend="xla")
        assert gc._per_key_delta_rule() is None
    except ValueError as e:
        assert gc._per_key_delta_rule() == f"delta_rule rejects a per-key log_decay (B, L, H, K): {e}"


def test_kernel_table_covers_the_ops_and_awkward_shapes():
    ops = {gc._public_name(c.op) for c in gc.KERNEL_CASES}
    assert ops >= {"linear_scan", "dense_linear_scan", "linear_attention", "delta_rule", "rg_lru", "selective_scan"}
    assert ops >= {"mlstm", "delta_product"}
    gates = {(c.opts.get("gate"), bool(c.opts.get("normalize"))) for c in gc.KERNEL_CASES if c.op == "linear_attention"}
    assert {g for g, _ in gates} == {"none", "scalar", "key"} and any(n for _, n in gates)
    assert any(c.op == "delta_rule_per_key" and c.opts["gate"] == "key" for c in gc.KERNEL_CASES)
    assert {c.dtype for c in gc.KERNEL_CASES} == {"float32", "bfloat16", "complex64"}
    assert len({c.key for c in gc.KERNEL_CASES}) == len(gc.KERNEL_CASES)
    for dry in (False, True):
        shapes = [c.shape(dry) for c in gc.KERNEL_CASES]
        heads = [s for s in shapes if "H" in s]
        assert any(s["H"] == 1 for s in heads) and any(s["H"] > 1 for s in heads)
        assert any(s["K"] != s["V"] for s in heads)
        assert all(s["L"] % s["C"] for s in shapes if "C" in s)  # every chunked case has a ragged last chunk
        assert any(s["D"] % 128 for s in shapes if "D" in s)  # channels off the 128-channel block


# ------------------------------------------------------------------------------------------- supervisor
FAKE_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    EVENT = {event!r}
    def emit(**ev):
        print(EVENT + json.dumps(ev), flush=True)
    emit(event="hello", device={{"platform": "fake"}})
    for key in sys.argv[1].split(","):
        emit(event="start", key=key)
        print("working on", key, flush=True)
        if key.endswith("crash"):
            os._exit(9)
        if key.endswith("hang"):
            time.sleep(60)
        emit(event="done", key=key, result={{"status": "ok", "pid": os.getpid()}})
    """
).format(event=gc.EVENT)


def _fake_launch(calls):
    def launch(keys, remaining):
        calls.append((list(keys), dict(remaining)))
        cmd = [sys.executable, "-c", FAKE_WORKER, ",".join(keys)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    return launch


def test_supervisor_survives_a_crash_and_kills_an_overrun():
    keys = ["a/1", "a/crash", "a/2", "b/hang", "b/3", "c/4"]
    section_of = {k: k.split("/")[0] for k in keys}
    results, calls, echoed = {}, [], []
    budgets = {"a": 100.0, "b": 0.5, "c": 100.0}
    t0 = time.time()
    used = gc.supervise(
        keys,
        section_of,
        budgets,
        time.time() + 120,
        _fake_launch(calls),
        lambda k, r: results.setdefault(k, r),
        echo=echoed.append,
        grace=(0.5, 0.0),
    )
    assert time.time() - t0 < 30  # the hung item was killed at b's budget + grace, not after 60 s
    assert list(results) == keys  # one result per item, in order
    assert results["a/1"]["status"] == "ok" and results["a/2"]["status"] == "ok" and results["c/4"]["status"] == "ok"
    crash = results["a/crash"]
    assert crash["status"] == "error" and "worker process died (exit status 9)" in crash["reason"]
    assert "working on a/crash" in crash["reason"]  # the worker's last output
    assert results["a/1"]["pid"] != results["a/2"]["pid"]  # a fresh worker after the crash
    assert results["b/hang"]["status"] == "error" and "b section ran past its budget" in results["b/hang"]["reason"]
    assert results["b/3"] == {"status": "not run", "reason": "the b section's budget is spent"}
    assert [c[0][0] for c in calls] == ["a/1", "a/2", "c/4"]  # restarted after the crash, then after the kill
    assert calls[1][1]["a"] < 100.0 and calls[2][1]["b"] == 0.0  # budgets already used are passed on
    assert 0.5 < used["b"] < 10 and "working on a/1" in echoed


def test_supervisor_past_the_deadline_runs_nothing():
    results, calls = {}, []
    gc.supervise(["a/1"], {"a/1": "a"}, {"a": 1.0}, time.time() - 1, _fake_launch(calls), results.__setitem__)
    assert calls == [] and results == {"a/1": {"status": "not run", "reason": "the run's time limit was reached"}}


def test_worker_starts_nothing_in_a_spent_section(capsys):
    keys = ["kernels/linear_scan.ragged.f32", "scan/linear_scan"]
    budgets = {s: 0.0 for s in gc.SECTIONS}
    assert gc.run_worker(keys, budgets, time.time() + 60, dry=True) == 0
    events = [json.loads(x[len(gc.EVENT) :]) for x in capsys.readouterr().out.splitlines() if x.startswith(gc.EVENT)]
    assert events[0]["event"] == "hello" and events[0]["device"]["platform"] == "cpu"
    assert [(e["event"], e["key"], e["result"]["status"]) for e in events[1:]] == [
        ("skip", keys[0], "not run"),
        ("skip", keys[1], "not run"),
    ]
    assert events[1]["result"]["reason"] == "the kernels section's budget is spent"


# ------------------------------------------------------------------------------------------- command line
def test_without_a_gpu_it_stops_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gc.jax, "default_backend", lambda: "cpu")
    t0 = time.time()
    assert gc.main(["--out", str(tmp_path / "out")]) == 2
    assert time.time() - t0 < 10 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert "gpu_check: no GPU here" in err and "--dry-run" in err


def test_help_and_list(capsys):
    with pytest.raises(SystemExit) as e:
        gc.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in gc.SECTIONS + ("--dry-run", "--budget", "--max-minutes", "--only", "--list", "gpu_check.json"):
        assert word in text, word
    assert "Exit status" in text and "L = 65536, D = 1536" in text and "K = V = 128" in text
    assert gc.main(["--list", "--dry-run", "--sections", "kernels,scan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == [c.key for c in gc.KERNEL_CASES] + ["scan/linear_scan"]
    for bad in (["--sections", "kernel"], ["--budget", "scan=-1"], ["--dry-run"], ["--only", "nothing", "--out", "x"]):
        with pytest.raises(SystemExit) as e:
            gc.main(bad)
        assert e.value.code == 2, bad


# ------------------------------------------------------------------------------------------- CUDA lowering
def _lowers_for_cuda(case, monkeypatch):
    """Lower the case's forward and gradient for CUDA from this host (docs/backends.md §Pallas lowering) with the
    kernels asked to compile (not interpret); returns the Triton call counts."""
    monkeypatch.setattr(_backend, "pallas_interpret", lambda: False)
    jax.clear_caches()  # no interpret-mode trace of an inner jit may be reused
    try:
        st = gc.setup_case(case, dry=True)
        shapes = [None if a is None else jax.ShapeDtypeStruct(a.shape, a.dtype) for a in st.args]
        return lower_for_cuda(st.fwd, *shapes).count(gc.TRITON), lower_for_cuda(st.grad, *shapes).count(gc.TRITON)
    finally:
        jax.clear_caches()


# ops whose gradient runs a Pallas kernel too (a reverse scan; selective_scan's forward writing chunk states); the
# fast-weight ops differentiate their chunked XLA form, so their lowered gradient holds no Triton call
GRAD_KERNEL_OPS = ("linear_scan", "dense_linear_scan", "rg_lru", "selective_scan")


def _check_lowering(key, monkeypatch):
    case = _case(key)
    fwd, grad = _lowers_for_cuda(case, monkeypatch)
    assert fwd >= 1
    assert grad >= 1 if case.op in GRAD_KERNEL_OPS else grad >= 0  # the gradient lowered either way


@pytest.mark.parametrize(
    "key",
    ["kernels/linear_scan.reverse.c64", "kernels/selective_scan.groups.reverse.bf16", "kernels/delta_rule.scalar.bf16"],
)
def test_kernel_cases_lower_for_cuda(key, monkeypatch):
    _check_lowering(key, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("key", [c.key for c in gc.KERNEL_CASES])
def test_every_kernel_case_lowers_for_cuda(key, monkeypatch):
    case = _case(key)
    spec = gc.OP_SPECS[case.op]
    if spec.guard and spec.guard(case):
        pytest.skip(spec.guard(case))  # the op is not in this checkout (its reason is the skip message)
    _check_lowering(key, monkeypatch)
