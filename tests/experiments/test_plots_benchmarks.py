"""Plots (curves with smoothed train curve and baselines, show_task's colour bar and legend) and where the
benchmarks write their JSON. Nothing here times anything."""

import json
import os

import numpy as np
import pytest

from algornn.experiments import plots, show_task
from algornn.experiments.benchmarks import _report
from algornn.experiments.tasks import Task, get_task


def _labels_task(train, val, *, kind="classification", num_classes=3, chance=1 / 3):
    splits = {"train": np.asarray(train), "val": np.asarray(val)}

    def load(split):
        labels = splits[split]
        n = labels.shape[0]
        return {"inputs": np.ones((n, 4), np.int32), "labels": labels, "lengths": np.full(n, 4, np.int32)}

    return Task(
        name="labels", num_classes=num_classes, seq_len=4, load_split=load, vocab_size=3, kind=kind, chance=chance
    )


def test_accuracy_baselines():
    # the most frequent training class (0) answers 1 of the 4 validation labels correctly
    task = _labels_task([0, 0, 1, 2, 0], [0, 1, 1, 2])
    assert plots.accuracy_baselines(task, "val") == {"chance": pytest.approx(1 / 3), "majority": 0.25}
    # per-position labels: only scored entries (>= 0) count; class 2 is the majority of the scored training labels
    per_pos = _labels_task([[2, -1, 2, 1], [-1, -1, 0, 2]], [[-1, 2, 1, -1], [2, 2, -1, -1]], kind="sequence_labels")
    assert plots.accuracy_baselines(per_pos, "val")["majority"] == 0.75
    reg = Task(
        name="r",
        num_classes=1,
        seq_len=2,
        kind="regression",
        input_dim=1,
        chance=1 / 6,
        load_split=lambda s: {
            "inputs": np.zeros((2, 2, 1)),
            "labels": np.zeros(2, np.float32),
            "lengths": np.full(2, 2),
        },
    )
    assert plots.accuracy_baselines(reg, "val") == {}


def test_smooth_is_a_bias_corrected_moving_average():
    values = np.array([4.0, 0.0, 2.0, 8.0, 1.0])
    span = 3
    alpha = 2 / (span + 1)
    for i in range(len(values)):  # weighted mean of the points so far, weights (1 - alpha)^age
        w = (1 - alpha) ** np.arange(i, -1, -1)
        assert plots.smooth(values, span)[i] == pytest.approx(np.sum(w * values[: i + 1]) / np.sum(w))
    assert plots.smooth(values, 1).tolist() == values.tolist()  # span 1: no smoothing


def test_curves_show_raw_and_smoothed_train_and_the_baselines(tmp_path):
    rng = np.random.default_rng(0)
    records = [
        {
            "step": s,
            "split": "train",
            "loss": 2.0 - s / 100 + rng.normal(0, 0.1),
            "accuracy": 0.1 + s / 500 + rng.normal(0, 0.05),
        }
        for s in range(1, 101)
    ]
    records += [{"step": s, "split": "val", "loss": 2.0 - s / 100, "accuracy": 0.1 + s / 500} for s in (50, 100)]
    fig = plots.curves_figure(records, title="t", chance=0.1, majority=0.15)
    loss_ax, acc_ax = fig.axes
    labels = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert labels[:2] == ["train (raw)", "train (smoothed, EMA over ~10 logs)"]
    assert "majority class 15.0 %" in labels and "chance 10.0 %" in labels
    raw, smoothed = acc_ax.lines[:2]
    assert raw.get_alpha() < 0.5 and smoothed.get_linewidth() > raw.get_linewidth()
    assert np.std(np.diff(smoothed.get_ydata())) < np.std(np.diff(raw.get_ydata())) / 3
    flat = [ln for ln in acc_ax.lines if len(set(ln.get_ydata())) == 1]
    assert sorted(ln.get_ydata()[0] for ln in flat) == [0.1, 0.15]

    # the plots CLI takes the baselines from a finished run's results.json
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "results.json").write_text(json.dumps({"baselines": {"chance": 0.1, "majority": 0.15}}))
    plots.main([str(tmp_path)])
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_show_task_token_rows_have_colour_bar_and_marker_legend():
    task = get_task("mqar", seq_len=40, n_train=8, n_val=4, n_test=4)
    fig = show_task.figure(task, "train", 3)
    ax, bar = fig.axes
    assert bar.get_ylabel() == "token id (0 = padding)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "scored position: its target is listed at the left, in order"
    ]
    # one circle per scored position
    n_scored = int((task.examples("train", np.arange(3))["labels"] >= 0).sum())
    assert len(ax.collections[0].get_offsets()) == n_scored


def test_benchmark_output_defaults_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _report.output_path(None, "layers_cpu") == str(tmp_path / "results" / "layers_cpu.json")
    assert _report.output_path("x/y.json", "layers_cpu") == str(tmp_path / "x" / "y.json")
    with pytest.raises(ValueError, match="name: expected a file stem"):
        _report.output_path(None, "a/b")
    path = _report.write_json({"v": np.float32(1.5)}, _report.output_path(None, "scan_cpu"))
    assert json.loads(open(path).read()) == {"v": 1.5}
    package = os.path.dirname(os.path.abspath(_report.__file__))
    assert not path.startswith(package)


def _layers_row(mixer, fwd_bwd_s=0.5, peak=2**20):
    """A made-up row of the layers benchmark (no timing)."""
    return {
        "mixer": mixer,
        "fwd_bwd_s": fwd_bwd_s,
        "fwd_bwd_tokens_per_s": 8.0,
        "xla_peak_bytes": peak,
        "call_s_L_quarter": 0.01,
        "call_s_L": 0.04,
        "step_s_fresh": 0.001,
        "step_s_after_L": 0.001,
        "step_scan_s_per_token": 0.001,
        "speedup_step_vs_call_L": 40.0,
    }


def test_layers_benchmark_prints_its_table_once(tmp_path, monkeypatch, capsys):
    from algornn.experiments.benchmarks import layers as bench

    def fake(name, B, L, D, n, heads, repeats, backend=None):  # no timing: one made-up row per mixer
        return _layers_row(name)

    monkeypatch.setattr(bench, "bench_mixer", fake)
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--quick", "--mixers", "s4d,lru"]) == 0
    out = capsys.readouterr().out
    assert out.count("fwd+bwd ms") == 1 and out.count("\ns4d ") == 1 and out.count("\nlru ") == 1
    written = json.loads((tmp_path / "results" / f"layers_{bench.jax.default_backend()}.json").read_text())
    assert [r["mixer"] for r in written["rows"]] == ["s4d", "lru"]


def test_layers_benchmark_compares_a_mixer_with_an_explicit_backend(tmp_path, monkeypatch, capsys):
    """``name@backend`` passes ``backend=`` to the mixer, and a mixer measured both ways gets its time and memory
    ratios (default / that backend) printed and written."""
    from algornn.experiments.benchmarks import layers as bench

    seen = []

    def fake(name, B, L, D, n, heads, repeats, backend=None):
        seen.append((name, backend))
        if backend is None:
            return _layers_row(name)
        return _layers_row(f"{name}@{backend}", fwd_bwd_s=2.0, peak=8 * 2**20)

    monkeypatch.setattr(bench, "bench_mixer", fake)
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--quick", "--mixers", "s4d,selective_ssm,selective_ssm@reference"]) == 0
    assert seen == [("s4d", None), ("selective_ssm", None), ("selective_ssm", "reference")]
    out = capsys.readouterr().out
    assert "selective_ssm default / selective_ssm@reference: fwd+bwd time 0.25x, XLA peak memory 0.12x" in out
    written = json.loads((tmp_path / "results" / f"layers_{bench.jax.default_backend()}.json").read_text())
    assert written["ratios"] == {
        "selective_ssm default / selective_ssm@reference": {"fwd_bwd_time": 0.25, "xla_peak_memory": 0.125}
    }
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--mixers", "selective_ssm@cuda"])


def test_memory_gradient_sees_the_lmu_window(tmp_path, capsys):
    """LMU remembers a window of θ steps (Voelker et al. 2019): with the default θ = 100 a token 511 steps back
    barely reaches the last output, with θ = L = 512 it does as much as S4D's (measured 5e-8 against 0.13)."""
    from algornn.experiments.benchmarks import memory_gradient

    out = tmp_path / "g.json"
    assert memory_gradient.main(["--mixers", "lmu", "--set", "lmu:theta=512.0", "--out", str(out)]) == 0
    wide = json.loads(out.read_text())["rows"][0]
    narrow = memory_gradient.gradient_from_start("lmu")
    assert wide["options"] == {"theta": 512.0} and wide["from_start"] > 1e-2 > 1e4 * narrow["from_start"]
    assert wide["everywhere"] > 1.0 and narrow["everywhere"] > 1.0  # nearby tokens reach it either way
    assert "from position 0" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="MIXER:KEY=VALUE"):
        memory_gradient.main(["--set", "theta=5"])


def test_memory_gradient_shows_the_reach_of_the_mamba2_decay_init(tmp_path):
    """Gated DeltaNet's decay starts as Mamba-2's, exp(−Δ·A) with Δ ~ logU[1e-3, 1e-1], A ~ U[1, 16], on 4 heads:
    at L = 512 (init seed 0) nothing of position 0 reaches the last output (measured 0.0 in float32); a lower Δ
    range (dt_min=1e-4, dt_max=1e-3) lets it through (1.2e-2). --seeds repeats the measurement per init seed."""
    from algornn.experiments.benchmarks import memory_gradient

    default = memory_gradient.gradient_from_start("gated_deltanet")
    slow = memory_gradient.gradient_from_start("gated_deltanet", {"dt_min": 1e-4, "dt_max": 1e-3})
    assert default["from_start"] < 1e-6 and slow["from_start"] > 1e-3, (default, slow)
    out = tmp_path / "g.json"
    assert memory_gradient.main(["--mixers", "s4d", "--length", "64", "--seeds", "2", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert [s["seed"] for s in row["seeds"]] == [0, 1] and row["from_start"] == row["seeds"][0]["from_start"]
    assert row["seeds"][0]["from_start"] != row["seeds"][1]["from_start"]  # other parameters, another gradient


def test_memory_gradient_selective_reach_falls_with_length_and_rises_with_slower_decay_rates(tmp_path):
    """SelectiveSSM writes a token with gain Δ and keeps it with exp(−|A| Σ Δ), so with Mamba's A_n = −(n + 1) its
    reach L steps ahead is at most max_Δ Δ·exp(−Δ L) = 1/(e·L): halving L about doubles it (measured 3.2e-3 at
    L = 64, 8.0e-4 at 256), and A_n = −0.01·(n + 1) (``a_scale``) lifts the bound 100x (measured 4.0e-2 against
    3.7e-4 at L = 512). ``--length`` takes several lengths."""
    from algornn.experiments.benchmarks import memory_gradient

    out = tmp_path / "g.json"
    assert memory_gradient.main(["--mixers", "selective_ssm", "--length", "64,256", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["length"] == [64, 256] and [r["length"] for r in data["rows"]] == [64, 256]
    near, far = (r["from_start"] for r in data["rows"])
    assert 2.0 < near / far < 8.0, (near, far)
    default = memory_gradient.gradient_from_start("selective_ssm", length=256)["from_start"]
    slow = memory_gradient.gradient_from_start("selective_ssm", {"a_scale": 0.01}, length=256)["from_start"]
    assert default == far and slow > 30 * default, (default, slow)
    with pytest.raises(SystemExit, match="--length"):
        memory_gradient.main(["--length", "64,x"])
