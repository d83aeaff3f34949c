"""The ``algornn`` namespace: nothing generic is installed at top level, so a working directory that holds
folders named ``layers/``, ``ssm/``, ``experiments/``, ``checkpoints/`` or ``scan_kernels/`` (every run folder
has a ``checkpoints/``) cannot hide the library, in an editable and in a regular install; the console scripts
exist; a checkpoint written by version 0.1 (generic module names in its builder) still loads and evaluates.

Every check runs in a subprocess, whose working directory and ``sys.path`` are what a user would have.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERIC = ("scan_kernels", "ssm", "layers", "experiments", "checkpoints")
FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v0_1"
# The test loss of FIXTURE's step-2 model, measured by version 0.1's own evaluate CLI when it wrote it.
FIXTURE_TEST_LOSS = 2.291160265604655

PROBE = """
import json, algornn
from algornn.checkpoints import CheckpointError
from algornn.layers import S4D
from algornn.scan_kernels import linear_scan
from algornn.ssm import hippo
from algornn.experiments.tasks import list_tasks
print(json.dumps({"file": algornn.__file__, "version": algornn.__version__,
                  "subpackages": sorted(m for m in algornn.__all__ if m != "__version__")}))
"""


def _decoys(folder: Path) -> Path:
    """Folders named like the old top-level packages; importing any of them fails loudly."""
    for name in GENERIC:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('decoy {name} was imported')\n")
    return folder


def _run(args, cwd, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_installed_import_ignores_generic_folders_in_cwd(tmp_path):
    res = _run(["-c", PROBE], cwd=_decoys(tmp_path))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["subpackages"] == sorted(GENERIC)
    assert not info["file"].startswith(str(tmp_path))


def test_no_generic_top_level_module_is_installed(tmp_path):
    code = (
        "import importlib.util, json; print(json.dumps({n: importlib.util.find_spec(n) is not None "
        f"for n in {GENERIC!r}}}))"
    )
    res = _run(["-c", code], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {n: False for n in GENERIC}


@pytest.mark.parametrize(
    "module", ["algornn.experiments.train", "algornn.experiments.evaluate", "algornn.experiments.show_task"]
)
def test_cli_modules_help_from_a_run_folder(tmp_path, module):
    res = _run(["-m", module, "--help"], cwd=_decoys(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "usage:" in res.stdout


@pytest.mark.parametrize("script", ["algornn-train", "algornn-evaluate", "algornn-show-task"])
def test_console_scripts(tmp_path, script):
    exe = Path(sys.executable).parent / script
    assert exe.exists(), f"console script {script} is not installed next to {sys.executable}"
    res = subprocess.run([str(exe), "--help"], cwd=_decoys(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: {script} ")


def test_package_namespace_is_clean():
    import algornn

    assert {n for n in dir(algornn) if not n.startswith("_")} == set(GENERIC)


def test_regular_install_ignores_generic_folders_in_cwd(tmp_path):
    """``pip install .`` (a wheel, not editable) into a target folder, then import it from a decoy cwd."""
    target = tmp_path / "site"
    src = tmp_path / "src"
    # Copy the sources so the build writes its egg-info/build folders outside the repository.
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(".git", ".venv*", "runs", "data", "*.egg-info", "__pycache__", "build", "tests"),
    )
    try:  # build with this environment's setuptools when it can make wheels (>= 70.1 has bdist_wheel) ...
        import setuptools.command.bdist_wheel  # noqa: F401

        isolation = ["--no-build-isolation"]
    except ImportError:  # ... else pip makes an isolated build environment from the package index
        isolation = []
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation, "--target", str(target), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    installed = sorted(p.name for p in target.iterdir() if not p.name.endswith((".dist-info", ".egg-info")))
    assert "algornn" in installed and not set(GENERIC) & set(installed), installed
    assert (target / "algornn" / "py.typed").exists()
    res = _run(["-c", PROBE], cwd=_decoys(tmp_path / "cwd"), pythonpath=target)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["file"] == str(target / "algornn" / "__init__.py")


@pytest.mark.loose_promotion
def test_version_0_1_checkpoint_evaluates_from_its_run_folder(tmp_path):
    """The bug this namespace fixes: ``cd runs/demo && evaluate --checkpoint .`` with ``checkpoints/`` in cwd."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run / "checkpoints")
    meta = json.loads((run / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert meta["builder"] == "experiments._models:model_from_config"  # the old, generic module path
    res = _run(["-m", "algornn.experiments.evaluate", "--checkpoint", ".", "--split", "test"], cwd=run)
    assert res.returncode == 0, res.stdout + res.stderr
    metrics = json.loads((run / "eval_test.json").read_text())
    assert metrics["step"] == 2 and metrics["count"] == 12
    assert metrics["loss"] == pytest.approx(FIXTURE_TEST_LOSS, rel=1e-5)


def test_new_checkpoints_record_a_public_builder():
    from algornn import experiments
    from algornn.experiments._models import BUILDER

    module, _, name = BUILDER.partition(":")
    assert module == "algornn.experiments" and not name.startswith("_")
    assert getattr(experiments, name) is not None


def test_pyproject_lists_every_subpackage():
    """``pyproject.toml`` lists packages explicitly (the folders are mapped under ``algornn``): a new folder with
    an ``__init__.py`` that is not listed would be missing from a regular install."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"algornn"} | {
        "algornn." + ".".join(init.parent.relative_to(REPO).parts)
        for top in GENERIC
        for init in (REPO / top).rglob("__init__.py")
    }
    assert listed == found, (
        f"missing from pyproject: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"
    )
