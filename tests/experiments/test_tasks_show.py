"""The show_task CLI: draws PNGs, prints statistics, rejects bad input with a usage error."""

import numpy as np
import pytest

from algornn.experiments import show_task


def test_draws_pathfinder_and_prints_stats(tmp_path, capsys):
    out = tmp_path / "pf.png"
    rc = show_task.main(
        [
            "pathfinder",
            "--n",
            "4",
            "--out",
            str(out),
            "--stats",
            "--set",
            "n_train=8",
            "--set",
            "n_val=4",
            "--set",
            "n_test=4",
            "--set",
            "cache_dir=False",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "labels (8 scored): 0:0.500 1:0.500" in text and "lengths: min=1024" in text
    from PIL import Image

    img = np.asarray(Image.open(out))
    assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 10  # a real, non-blank drawing


@pytest.mark.parametrize(
    "name, opts", [("mqar", ["seq_len=40", "n_train=20"]), ("adding", ["seq_len=30", "n_train=20"])]
)
def test_draws_token_and_real_tasks(tmp_path, capsys, name, opts):
    out = tmp_path / f"{name}.png"
    args = [name, "--n", "3", "--out", str(out), "--stats"]
    for o in opts:
        args += ["--set", o]
    assert show_task.main(args) == 0
    assert out.stat().st_size > 1000
    assert f"{name} [train] examples=20" in capsys.readouterr().out


def test_bad_input_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        show_task.main(["nosuchtask"])
    assert e.value.code == 2 and "unknown task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        show_task.main(["copying", "--set", "seqlen=3"])
    assert "allowed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        show_task.main(["--help"])
    assert e.value.code == 0
