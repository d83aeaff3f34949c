"""An irregularly sampled task: a noisy sinusoid observed at random times; classify its frequency.

The structure of the pendulum regression of S5 (Smith, Warrington & Linderman 2023, §6.3: a continuous-time
system observed at random times, the model told the time between observations), on a generated 1-D signal:

    class c ~ U{0, ..., n_classes-1},  f_c = linspace(f_min, f_max, n_classes)[c]   (cycles per grid step)
    gaps   g_k ~ mean_gap · Exp(1) (clipped to >= 1e-3),  t_k = g_0 + ... + g_k        (k = 0 .. L-1)
    x_k    = a · sin(2π f_c t_k + φ) + noise · ε_k,   a ~ U[0.5, 1.5], φ ~ U[0, 2π), ε_k ~ N(0, 1)

Arrays: ``inputs (N, L, 1)`` float32 samples x_k, ``dt (N, L)`` float32 gaps g_k (the elapsed time before each
sample, in grid steps; the trainer passes it to the model as ``dt``), ``labels (N,)`` the class c, ``lengths``
all L. ``use_dt=False`` serves the same samples with ``dt`` all ones: the model is told the samples were
regular (timestamps ignored), the baseline the true gaps are compared with.

Chance (and the majority class, the classes being balanced in expectation): 1 / n_classes. Without the times a
model can still read the frequency off the sample-to-sample correlation, E[cos(2π f g)] = 1/(1 + (2π f ·
mean_gap)²) for exponential gaps, a noisy statistic over L samples; with them the phase advance 2π f g_k of
each gap is known.

Shape legend: N examples, L length (``seq_len``).
"""

from __future__ import annotations

import zlib

import numpy as np

from algornn.experiments.tasks._base import SPLITS, Task
from algornn.experiments.tasks._registry import register
from algornn.scan_kernels._common.validate import check_bool, check_float, check_int

MIN_GAP = 1e-3


def generate_irregular_sine(n, seq_len, rng, *, n_classes=16, f_min=0.02, f_max=0.17, mean_gap=1.0, noise=0.2):
    """Irregular-sine arrays: inputs (N, L, 1) float32, dt (N, L) float32 gaps, labels (N,) int16."""
    labels = rng.integers(0, n_classes, n)
    freq = np.linspace(f_min, f_max, n_classes)[labels]  # (N,)
    gaps = np.maximum(mean_gap * rng.exponential(1.0, (n, seq_len)), MIN_GAP)
    times = np.cumsum(gaps, axis=1)  # (N, L)
    amp = rng.uniform(0.5, 1.5, n)
    phase = rng.uniform(0.0, 2 * np.pi, n)
    x = amp[:, None] * np.sin(2 * np.pi * freq[:, None] * times + phase[:, None])
    x = x + noise * rng.standard_normal((n, seq_len))
    return {
        "inputs": x[..., None].astype(np.float32),
        "dt": gaps.astype(np.float32),
        "labels": labels.astype(np.int16),
        "lengths": np.full(n, seq_len, np.int32),
    }


@register("irregular_sine")
def irregular_sine(
    *,
    seq_len=128,
    n_classes=16,
    f_min=0.02,
    f_max=0.17,
    mean_gap=1.0,
    noise=0.2,
    use_dt=True,
    n_train=8000,
    n_val=1000,
    n_test=1000,
    data_seed=0,
):
    check_int("seq_len", seq_len, minimum=2)
    check_int("n_classes", n_classes, minimum=2)
    check_float("f_min", f_min)
    check_float("f_max", f_max)
    if not f_min < f_max:
        raise ValueError(f"f_min={f_min!r} must be < f_max={f_max!r} (cycles per grid step)")
    check_float("mean_gap", mean_gap)
    check_float("noise", noise, low_open=False)
    check_bool("use_dt", use_dt)
    counts = {
        "train": check_int("n_train", n_train, minimum=1),
        "val": check_int("n_val", n_val, minimum=1),
        "test": check_int("n_test", n_test, minimum=1),
    }
    check_int("data_seed", data_seed, minimum=0)
    params = dict(n_classes=n_classes, f_min=f_min, f_max=f_max, mean_gap=mean_gap, noise=noise)
    stream = zlib.crc32(b"irregular_sine")

    def load(split):
        rng = np.random.default_rng((data_seed, stream, SPLITS.index(split)))
        arrays = generate_irregular_sine(counts[split], seq_len, rng, **params)
        if not use_dt:  # the same samples, their times ignored
            arrays["dt"] = np.ones_like(arrays["dt"])
        return arrays

    options = dict(seq_len=seq_len, use_dt=use_dt, n_train=n_train, n_val=n_val, n_test=n_test, data_seed=data_seed)
    return Task(
        name="irregular_sine",
        num_classes=n_classes,
        seq_len=seq_len,
        input_dim=1,
        kind="classification",
        chance=1.0 / n_classes,
        options={**options, **params},
        description=__doc__,
        load_split=load,
    )
