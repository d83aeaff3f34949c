"""Progress off a terminal: the data generators and the trainer share one progress helper, which writes plain
lines (no carriage returns) when stderr is a log file or a pipe, as under pytest's capture."""

import numpy as np

from algornn.experiments import _progress
from algornn.experiments.tasks import _pathfinder_gen, listops


def test_listops_generation_progress_is_plain_lines(capsys):
    listops._sample(300, 0, min_length=8, max_length=40, max_depth=4, max_args=4, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.strip().splitlines()[-1].startswith("listops: examples 300/300 (100%)")


def test_pathfinder_generation_progress_is_plain_lines(capsys):
    _pathfinder_gen.generate_images(6, np.random.default_rng(0), size=32, difficulty="easy", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "pathfinder32-easy: images 6/6 (100%)" in err


def test_line_progress_throttles_to_the_interval(capsys, monkeypatch):
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(_progress.time, "time", lambda: next(clock))
    bar = _progress.LineProgress(100, 0, "job", "step", interval=10.0)
    for _ in range(100):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    # one line per 10 ticks of the fake clock (each update reads it once), then the closing line at 100 %
    assert 5 <= len(lines) <= 12 and lines[-1].startswith("job: step 100/100 (100%)")
