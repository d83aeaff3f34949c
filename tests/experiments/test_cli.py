"""The training command line as a user meets it: missing data, logs that are not a terminal, finished runs,
resuming with other settings, an overridden mixer.

The subprocess tests run ``python -m algornn.experiments.train`` in a temporary working directory, exactly as
a user would, and look at the exit status, stderr and what was (not) written.
"""

import json
import os
import subprocess
import sys

import pytest
from flax import nnx

from algornn import checkpoints
from algornn.experiments._models import build_model
from algornn.experiments.config import apply_overrides
from algornn.experiments.presets import get_preset
from algornn.experiments.trainer import train_and_evaluate
from tests.experiments.test_train import TINY, _setup, tiny

pytestmark = pytest.mark.loose_promotion


def _train_cli(args, cwd, **kwargs):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    streams = {} if kwargs else {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.run(
        [sys.executable, "-m", "algornn.experiments.train", *args],
        cwd=cwd,
        env=env,
        text=True,
        timeout=300,
        **streams,
        **kwargs,
    )


# ----------------------------------------------------------------------------------------------------
# missing data: one message, exit status 1, no traceback, nothing written

MISSING = [
    ("text_s4d", []),  # the preset itself, as in the README's list
    ("retrieval_s5", []),
    ("image_s4", []),
    ("demo", ["task.name=scifar"]),
    ("demo", ["task.name=smnist"]),
    ("demo", ["task.name=psmnist"]),
    ("demo", ["task.name=pathfinder", "task.options.data_dir=nowhere"]),
    ("demo", ["task.options.data_dir=nowhere"]),  # listops from the LRA files
]


@pytest.mark.parametrize("preset, overrides", MISSING, ids=[" ".join([p, *o]) for p, o in MISSING])
def test_missing_data_is_one_clean_message(tmp_path, preset, overrides):
    proc = _train_cli(["--config", preset, "--workdir", "run", *overrides], tmp_path)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert "Traceback" not in err and proc.stdout == ""
    assert err.count("error:") == 1 and "the data files are missing" in err and "Expected:" in err
    assert len(err.splitlines()) <= 14, err
    if "task.options.data_dir=nowhere" in overrides:
        assert "data_dir='nowhere'" in err
    else:
        assert "task.options.data_dir=DIR" in err  # the command-line spelling, not a Python keyword
    assert "Nothing was written to run." in err
    assert os.listdir(tmp_path) == []  # no empty workdir left behind


# ----------------------------------------------------------------------------------------------------
# a run whose output is not a terminal: no carriage returns; rerunning a finished run changes nothing


def test_logged_run_has_plain_progress_and_a_finished_run_is_left_alone(tmp_path, capsys):
    # In-process through the CLI's main (one compilation for the three runs); capsys's streams are not
    # terminals, as a log file or a pipe is not.
    from algornn.experiments import train

    args = ["--workdir", str(tmp_path / "run"), *TINY, "train.progress=true"]
    assert train.main(args) == 0
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    assert "demo: step 6/6 (100%) loss=" in err  # the closing progress line, a plain line
    assert "done: 6 steps" in out
    results_path = tmp_path / "run" / "results.json"
    results_bytes = results_path.read_bytes()
    first = json.loads(results_bytes)
    assert first["train_time_s"] > 0 and first["baselines"]["chance"] == 0.1

    assert train.main(args) == 0
    out, _ = capsys.readouterr()
    assert "already complete" in out and str(results_path) in out and "--reevaluate" in out
    assert "done:" not in out
    assert results_path.read_bytes() == results_bytes  # kept as it was: no bogus training time

    # --reevaluate evaluates the same checkpoints again: the same numbers, and the training time is the
    # stored one, not the seconds this call took
    assert train.main(args + ["--reevaluate"]) == 0
    redone = json.loads(results_path.read_text())
    for key in ("final_val", "test_from_best_checkpoint", "train_time_s", "best_step", "steps"):
        assert redone[key] == first[key], key


# ----------------------------------------------------------------------------------------------------
# resuming with settings that would bend the learning-rate schedule


def _plant_checkpoint(config, workdir, step=2):
    """The checkpoint an interrupted run of ``config`` leaves at ``step``."""
    task, spec, model, opt, _ = _setup(config)
    with checkpoints.CheckpointManager(workdir / "checkpoints") as mgr:
        mgr.save(
            step,
            model=model,
            optimizer=opt,
            meta={"config": config.to_dict(), "model_spec": spec, "data_position": {"epoch": 0, "step_in_epoch": step}},
        )


def test_resume_with_other_steps_or_schedule_is_refused(tmp_path):
    _plant_checkpoint(tiny(), tmp_path)  # a run of train.steps=6
    with pytest.raises(
        ValueError,
        match=r"holds a run of train.steps=6 \(checkpoint at step 2\); this run asks "
        r"for train.steps=10\. .*Rerun with train.steps=6",
    ):
        train_and_evaluate(tiny("train.steps=10"), tmp_path)
    with pytest.raises(ValueError, match=r"another learning-rate schedule \(optim.warmup_steps=2 -> 3\)"):
        train_and_evaluate(tiny("optim.warmup_steps=3"), tmp_path)

    from algornn.experiments import train

    assert train.main(["--workdir", str(tmp_path), *TINY, "train.steps=10"]) == 1  # one line, no traceback


def test_overridden_mixer_builds_without_the_old_options():
    config = apply_overrides(get_preset("demo"), ["model.mixer=deltanet", "model.d_model=16", "model.n_layers=1"])
    spec = {
        "vocab_size": 16,
        "input_dim": None,
        "num_classes": 10,
        "pair": False,
        "per_position": False,
        "seq_len": 32,
        "kind": "classification",
    }
    model = build_model(config, spec, rngs=nnx.Rngs(0))
    assert type(model.blocks[0].mixer).__name__ == "DeltaNet"
