"""experiments.suite: the one-step smoke of every suite (run, then report), skip-if-finished and resume, ``--only``,
the best-learning-rate choice on hand-made results, and the CLI.

The smoke grids (``--scale smoke``) are one run per suite: one layer of width 8, one step of batch 4, a few
examples; the point is that each suite's tasks, options, extra evaluations and report go through end to end.
"""

import json
import os
from dataclasses import replace

import pytest

from algornn.experiments.suite import SUITES, Run, Suite, best_per_cell, collect, run_suite, write_report
from algornn.experiments.suite.cli import main
from algornn.experiments.suite.suites import RANGE_MIXERS
from algornn.layers import MIXERS

pytestmark = pytest.mark.loose_promotion


@pytest.mark.parametrize("name", sorted(SUITES))
def test_smoke_run_then_report(name, tmp_path):
    root, out = tmp_path / "root", tmp_path / "out"
    records = run_suite(name, scale="smoke", root=str(root), progress=False, compilation_cache=False)
    assert [r["status"] for r in records] == ["trained"]
    workdir = records[0]["workdir"]
    for f in ("results.json", "run.json", "config.json", "metrics.jsonl"):
        assert os.path.isfile(os.path.join(workdir, f)), f
    run = SUITES[name].grid("smoke")[0]
    if run.has_extras:
        with open(os.path.join(workdir, "extras.json")) as f:
            extras = json.load(f)
        if run.extra_lengths:
            assert sorted(int(k) for k in extras["accuracy_by_length"]) == sorted(run.extra_lengths)
        if run.extra_test:
            assert 0.0 <= extras["test_accuracy"] <= 1.0
    paths = write_report(name, root=str(root), out_dir=str(out))
    assert paths["md"] == str(out / f"suite_{name}.md") and paths["png"] == str(out / f"suite_{name}.png")
    assert os.path.getsize(paths["png"]) > 0
    text = open(paths["md"]).read()
    assert run.name in text and "## Best learning rate per cell" in text and "Scale: `smoke`" in text
    data = json.load(open(paths["json"]))
    assert data["scale"] == "smoke" and [r["name"] for r in data["runs"]] == [run.name]
    assert data["best_per_cell"][0]["lr"] == run.lr and data["runs"][0]["wall_time_s"] > 0


def _tiny_suite(lrs=(1e-3, 3e-3)):
    def runs(scale):
        return [
            Run(
                suite="tiny",
                task="induction",
                label="deltanet",
                mixer="deltanet",
                mixer_options={"num_heads": 2, "chunk_size": 16},
                lr=lr,
                d_model=8,
                n_layers=1,
                steps=2,
                batch_size=4,
                task_options=dict(seq_len=12, n_train=8, n_val=4, n_test=4),
                cell={"train_len": 12},
                extra_lengths=(8,),
                extra_n_test=4,
            )
            for lr in lrs
        ]

    return Suite("tiny", "tiny", "a two-run grid", runs, x="eval_len")


def test_skip_finished_resume_and_only(tmp_path):
    suite, root = _tiny_suite(), str(tmp_path / "root")
    names = [r.name for r in suite.grid("cpu")]
    assert len(set(names)) == 2
    first = run_suite("tiny", root=root, progress=False, compilation_cache=False, suite=suite, only="lr1e-03")
    assert [r["name"] for r in first] == [names[0]] and first[0]["status"] == "trained"
    assert not os.path.exists(os.path.join(root, names[1]))  # --only left the other run alone
    results = os.path.join(root, names[0], "results.json")
    stamp = os.stat(results).st_mtime_ns
    again = run_suite("tiny", root=root, progress=False, compilation_cache=False, suite=suite)
    assert [r["status"] for r in again] == ["skipped", "trained"]
    assert os.stat(results).st_mtime_ns == stamp  # a finished run is not touched
    # extras lost: the trained checkpoint is kept (train_and_evaluate says already complete), extras redone
    os.remove(os.path.join(root, names[0], "extras.json"))
    third = run_suite("tiny", root=root, progress=False, compilation_cache=False, suite=suite)
    assert [r["status"] for r in third] == ["trained", "skipped"]
    assert os.stat(results).st_mtime_ns == stamp
    assert os.path.isfile(os.path.join(root, names[0], "extras.json"))
    with pytest.raises(ValueError, match="no run matching"):
        run_suite("tiny", root=root, progress=False, compilation_cache=False, suite=suite, only="nothing-like-this")
    with pytest.raises(ValueError, match="not a regular expression"):
        suite.grid("cpu", only="(")


def test_solved_cell_skips_its_remaining_learning_rates(tmp_path):
    """``Suite.solved_at``: the first run's validation accuracy decides whether the second is run at all, on
    this invocation and on a rerun (decided from the run dirs again); the report says so."""
    base, root = _tiny_suite(), str(tmp_path / "root")
    first = run_suite("tiny", root=root, progress=False, compilation_cache=False, suite=base, only="lr1e-03")
    with open(os.path.join(first[0]["workdir"], "results.json")) as f:
        val = json.load(f)["final_val"]["accuracy"]
    names = [r.name for r in base.grid("cpu")]

    def with_threshold(t):
        return Suite("tiny", "tiny", "a two-run grid", base.runs, x="eval_len", solved_at=t)

    # a threshold the first run reached: the second is not run, and nothing is written for it
    solved = run_suite("tiny", root=root, progress=False, compilation_cache=False, suite=with_threshold(val))
    assert [r["status"] for r in solved] == ["skipped", "solved"]
    assert not os.path.exists(os.path.join(root, names[1]))
    paths = write_report("tiny", root=root, out_dir=str(tmp_path / "out"), suite=with_threshold(val))
    assert "the rest of that cell are not run" in open(paths["md"]).read()
    # a threshold no accuracy reaches: the second learning rate is trained
    higher = run_suite("tiny", root=root, progress=False, compilation_cache=False, suite=with_threshold(1.01))
    assert [r["status"] for r in higher] == ["skipped", "trained"]


def test_jobs_train_cells_in_parallel_processes_as_one_job_does(tmp_path):
    """``jobs=2``: two cells train in two spawned processes; every run's results equal those of the same grid with
    one job, and the report gives the suite's wall time and jobs (a cell's learning rates in order: the solved_at
    test above, which shares ``_run_cell``)."""
    base = _tiny_suite(lrs=(1e-3,))

    def two_cells(scale):
        runs = base.grid(scale)
        return runs + [replace(r, label="deltanet_h1", mixer_options={"num_heads": 1, "chunk_size": 16}) for r in runs]

    suite = Suite("tiny", "tiny", "a two-cell grid", two_cells, x="eval_len")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    serial = run_suite("tiny", root=one, progress=False, compilation_cache=False, suite=suite)
    parallel = run_suite("tiny", root=two, progress=False, compilation_cache=False, suite=suite, jobs=2)
    assert [r["name"] for r in parallel] == [r["name"] for r in serial] and len(serial) == 2
    assert [r["status"] for r in parallel] == ["trained"] * 2
    for rec in serial:
        a, b = (json.load(open(os.path.join(root, rec["name"], "results.json"))) for root in (one, two))
        assert a["final_val"] == b["final_val"] and a["test_from_best_checkpoint"] == b["test_from_best_checkpoint"]
    timing = json.load(open(os.path.join(two, "timing.json")))
    assert timing["jobs"] == 2 and timing["wall_time_s"] > 0
    paths = write_report("tiny", root=two, out_dir=str(tmp_path / "out"), suite=suite)
    assert "took" in open(paths["md"]).read() and "with 2 jobs" in open(paths["md"]).read()
    assert json.load(open(paths["json"]))["jobs"] == 2
    again = run_suite("tiny", root=two, progress=False, compilation_cache=False, suite=suite, jobs=2)
    assert [r["status"] for r in again] == ["skipped"] * 2
    with pytest.raises(ValueError, match="jobs: 0"):
        run_suite("tiny", root=two, progress=False, compilation_cache=False, suite=suite, jobs=0)


def test_jobs_a_failing_cell_raises_its_error(tmp_path):
    base = _tiny_suite(lrs=(1e-3,))
    bad = Suite(
        "tiny",
        "tiny",
        "one good cell, one bad",
        lambda scale: (
            base.grid(scale) + [replace(r, label="bad", mixer_options={"bogus": 1}) for r in base.grid(scale)]
        ),
        x="eval_len",
    )
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bogus'\]"):
        run_suite("tiny", root=str(tmp_path), progress=False, compilation_cache=False, suite=bad, jobs=2)


_KILLED_PARENT = """
import sys
from dataclasses import replace
from tests.experiments.test_suite import _tiny_suite
from algornn.experiments.suite import Suite, run_suite

base = _tiny_suite()
long = Suite("tiny", "tiny", "long runs", lambda scale: [replace(r, steps=100000) for r in base.runs(scale)] + [
    replace(r, steps=100000, label="other") for r in base.runs(scale)], x="eval_len")
run_suite("tiny", root=sys.argv[1], progress=False, compilation_cache=False, suite=long, jobs=2)
"""


def _children(pid):
    out = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out |= {int(c) for c in f.read().split()}
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc (Linux)")
def test_jobs_workers_exit_when_the_suite_process_is_killed(tmp_path):
    """A killed ``run_suite(jobs=2)`` leaves no worker training on: each exits once its parent is gone."""
    import signal
    import subprocess
    import sys
    import time

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PARENT, str(tmp_path)], cwd=repo)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any(p.name.startswith("induction") for p in tmp_path.iterdir()):
            time.sleep(0.5)  # the workers have started their cells
        workers = {c for c in _children(proc.pid) if "spawn" in open(f"/proc/{c}/cmdline").read()}
        assert len(workers) == 2, workers
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(os.path.exists(f"/proc/{w}") for w in workers):
        time.sleep(0.5)
    alive = [
        w for w in workers if os.path.exists(f"/proc/{w}") and "Z" not in open(f"/proc/{w}/stat").read().split()[2]
    ]
    assert not alive, f"workers {alive} kept running after the suite process was killed"


def _write_run(root, name, cell_key, lr, vals, test):
    """A hand-made finished run dir: ``vals`` the validation accuracies of its evaluations."""
    d = root / name
    d.mkdir(parents=True)
    spec = {
        "name": name,
        "cell_key": cell_key,
        "task": "t",
        "label": cell_key.split("-")[0],
        "mixer": "m",
        "cell": {"seq_len": 64},
        "d_model": 32,
        "lr": lr,
    }
    (d / "run.json").write_text(json.dumps(spec))
    (d / "results.json").write_text(
        json.dumps(
            {
                "steps": 10,
                "final_val": {"accuracy": vals[-1]},
                "test_from_best_checkpoint": {"accuracy": test},
                "train_time_s": 1.0,
                "wall_time_s": 2.0,
            }
        )
    )
    (d / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i, "split": "val", "accuracy": v}) + "\n" for i, v in enumerate(vals))
    )


def test_best_lr_per_cell_on_validation(tmp_path):
    # cell a: lr 1e-3 peaks at 0.9 during training (ends at 0.5), 1e-2 ends at 0.8: the best evaluation counts
    _write_run(tmp_path, "a1", "a", 1e-3, [0.2, 0.9, 0.5], test=0.55)
    _write_run(tmp_path, "a2", "a", 1e-2, [0.3, 0.8], test=0.99)  # a better test number does not choose
    # cell b: a tie between two rates keeps the smaller one
    _write_run(tmp_path, "b1", "b", 3e-3, [0.7], test=0.1)
    _write_run(tmp_path, "b2", "b", 1e-4, [0.7], test=0.2)
    (tmp_path / "unfinished").mkdir()  # no results.json: not a run yet
    records = collect(str(tmp_path))
    assert sorted(r["name"] for r in records) == ["a1", "a2", "b1", "b2"]
    best = {r["cell_key"]: r for r in best_per_cell(records)}
    assert best["a"]["lr"] == 1e-3 and best["a"]["val_accuracy"] == 0.9 and best["a"]["test_accuracy"] == 0.55
    assert best["a"]["val_by_lr"] == {"0.001": 0.9, "0.01": 0.8} and best["a"]["cell_wall_time_s"] == 4.0
    assert best["b"]["lr"] == 1e-4


def test_cli_help_list_and_errors(tmp_path, capsys):
    for argv in (["--help"], ["run", "--help"], ["report", "--help"], ["list", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--scale" in out and "--only" in out and "--root" in out and "--jobs" in out
    assert main(["list", "--runs", "memory"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUITES) and "presence-s4d-seq_len512-d64-lr3e-03" in out
    assert main(["report", "mqar", "--root", str(tmp_path / "missing")]) == 1
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "no_such_suite"])


def test_cpu_grids_keep_the_protocols():
    """The cpu grids keep each protocol's structure: every mixer on memory with 3 learning rates (plus LMU with
    θ = L; the gated delta rules' levers in memory_levers), both
    capacity settings, both state-tracking tasks with and without negative eigenvalues, induction's lengths."""
    memory = SUITES["memory"].grid("cpu")
    assert {r.label for r in memory} == set(MIXERS) | {"lmu_theta_L"} and {r.lr for r in memory} == {3e-3}
    # memory_lrs: the same grid with 3 learning rates; its lr-3e-3 runs are memory's, name and config alike
    sweep = SUITES["memory_lrs"].grid("cpu")
    assert {r.label for r in sweep} == set(MIXERS) | {"lmu_theta_L"} and len({r.lr for r in sweep}) == 3
    shared = {r.name: r.config() for r in sweep if r.lr == 3e-3}
    assert shared == {r.name: r.config() for r in memory}
    # memory_levers: the gated delta rules' decay init crossed with their output gate at L = 64
    levers = {(r.label, r.cell["seq_len"]): r.mixer_options for r in SUITES["memory_levers"].grid("cpu")}
    for mixer in ("gated_deltanet", "delta_product"):
        assert levers[(f"{mixer}_mamba2dt_gate", 64)] == {"output_gate": True}
        assert levers[(f"{mixer}_slowdt_nogate", 512)] == {"dt_min": 1e-4, "dt_max": 1e-3, "output_gate": False}
    assert levers[("mlstm_plain", 256)] == {"output_norm": False, "output_gate": False}
    assert levers[("delta_product_n1_slowdt_nogate", 512)]["num_householder"] == 1
    assert levers[("mlstm", 256)] == {} and levers[("selective_ssm", 512)] == {}
    assert levers[("selective_ssm_slowdt", 512)] == {"dt_min": 1e-4, "dt_max": 1e-3}
    assert levers[("selective_ssm_expand2", 512)] == {"expand": 2}
    assert levers[("selective_ssm_a001", 512)] == {"a_scale": 0.01}
    assert levers[("s4d_real", 512)] == {"init": "real"}
    assert levers[("s4d_real_slowdt", 512)] == {"init": "real", "dt_min": 1e-5, "dt_max": 1e-3}
    assert len(levers) == 20
    capacity = SUITES["retrieval_capacity"].grid("cpu")
    assert {r.cell["setting"] for r in capacity} == {1, 2} and {r.mixer for r in capacity} == {
        "linear_attention",
        "deltanet",
    }
    state = SUITES["state_tracking"].grid("cpu")
    assert {r.task for r in state} == {"parity", "modular_arithmetic"}
    assert {r.mixer_options.get("negative_eigenvalues", False) for r in state} == {True, False}
    (lengths,) = {r.extra_lengths for r in SUITES["induction"].grid("cpu")}
    assert lengths[0] == 64 and lengths[-1] == 2048  # trained at 128: up to 16x the training length
    (paper_lengths,) = {r.extra_lengths for r in SUITES["induction"].grid("paper")}
    assert paper_lengths[-1] == 2**14
    mqar = SUITES["mqar"].grid("paper")
    assert {(r.task_options["n_keys"], r.task_options["n_values"]) for r in mqar} == {(4096, 4096)}
    assert len({r.lr for r in mqar}) == 4 and {r.d_model for r in mqar} == {64, 128}
    # the recall suites give linear attention and DeltaNet a short conv (no position information otherwise)
    for name in ("mqar", "selective_copying", "induction"):
        for scale in ("cpu", "paper"):
            convs = {r.mixer: r.mixer_options.get("short_conv") for r in SUITES[name].grid(scale)}
            assert all(convs[m] == 4 for m in ("linear_attention", "deltanet") if m in convs), (name, scale)
            assert convs.get("s4d", None) is None
    # memory_range: the mixers at chance on memory, at shorter lengths than memory's 512
    ranged = SUITES["memory_range"].grid("cpu")
    assert {r.mixer for r in ranged} == set(RANGE_MIXERS) and {r.cell["seq_len"] for r in ranged} == {64, 256}
    assert all(r.task == "presence" and r.steps > 200 for r in ranged)
    # selective_copying_long: the cpu cell of selective_copying with 10x the steps, data seen once
    short = {r.mixer: r for r in SUITES["selective_copying"].grid("cpu")}
    for r in SUITES["selective_copying_long"].grid("cpu"):
        assert r.steps == 10 * short[r.mixer].steps and r.task_options["n_train"] == r.steps * r.batch_size
        assert r.task_options["seq_len"] == short[r.mixer].task_options["seq_len"]
    # Zoology's reference, softmax attention (layers.BASELINES), is in both mqar grids, without a short conv
    for scale in ("cpu", "paper"):
        att = [r for r in SUITES["mqar"].grid(scale) if r.mixer == "attention"]
        assert att and all(r.mixer_options == {} for r in att)
    # memory_readout: memory's cpu runs of the mixers at chance (and S4D) with the query token at the end
    readout = SUITES["memory_readout"].grid("cpu")
    assert {r.mixer for r in readout} == set(RANGE_MIXERS) | {"s4d"}
    plain = {r.mixer: r for r in memory}
    for r in readout:
        assert r.task_options == dict(plain[r.mixer].task_options, query_token=True) and r.lr == 3e-3
    # state_tracking_long: state_tracking's parity runs of the two negative-eigenvalue SSMs, 7.5x the steps
    base = {r.label: r for r in state if r.task == "parity"}
    longer = SUITES["state_tracking_long"].grid("cpu")
    assert {r.label for r in longer} == {"selective_ssm_neg", "mamba2_neg"}
    for r in longer:
        assert r.steps == 7.5 * base[r.label].steps and r.mixer_options == {"negative_eigenvalues": True}
        assert r.task_options["test_max_len"] == base[r.label].task_options["test_max_len"] == 256
    # retrieval capacity: the width-2 conv stands in for Schlag et al.'s key and value arriving in one step
    assert {r.mixer_options["short_conv"] for r in SUITES["retrieval_capacity"].grid("cpu")} == {2}
