"""Named experiment presets: ``demo`` (the default) plus LRA and synthetic-task presets.

LRA presets follow the published configurations (docs/experiments.md §LRA published configurations):

* S4 / S4D: state-spaces/s4 ``configs/experiment/lra/s4-*.yaml`` — bidirectional, BatchNorm,
  AdamW (0.9, 0.999), cosine schedule with linear warmup stepped per step, masked mean pooling. S4D runs
  the same configs with the diagonal kernel (S4D paper). The s4 repo gives dt/A/B lr 1e-3 with
  weight decay 0; here the whole ``ssm``-tagged group (Δ, A/Λ, B) gets ``ssm_lr`` and no weight decay.
* S5: lindermanlab/S5 (``d_state`` = the script's ``ssm_size_base`` P, ``blocks`` = J; conj_sym stores P/2)
  ``bin/run_experiments/run_lra_*.sh`` — global lr = lr_factor · ssm_lr, epochs
  converted to steps with the LRA train sizes (ListOps 96k, IMDb 25k, AAN 147,086, CIFAR 45k,
  Pathfinder 160k), warmup one epoch where the script sets ``warmup_end=1``.

External-data presets (``text_*``, ``retrieval_*``, ``image_*``) need ``task.options.data_dir=DIR``.

Warmup, evaluation and checkpoint intervals are given in steps for the preset's own ``train.steps``; an
override of ``train.steps`` rescales them to the same fractions of the run (``config.apply_overrides``), so a
2000-step run of a 120k-step LRA preset warms up for 200 steps, not 12000.
"""

import dataclasses

from algornn.experiments.config import Config, ModelConfig, OptimConfig, TaskConfig, TrainConfig

# ----------------------------------------------------------------------------------------------------
# demo: a small long-range model on an embedded generated task (minutes on a 2-core CPU)


def demo() -> Config:
    """S4D (3 layers, width 64) on generated ListOps with 32 < length < 128 (majority class ~15 %, chance 10 %)."""
    return Config(
        name="demo",
        task=TaskConfig(
            name="listops", options={"max_length": 128, "min_length": 32, "n_train": 8000, "n_val": 500, "n_test": 500}
        ),
        model=ModelConfig(mixer="s4d", d_model=64, n_layers=3, mixer_options={"d_state": 32}),
        optim=OptimConfig(lr=5e-3, ssm_lr=1e-3, weight_decay=0.01, warmup_steps=50, grad_clip=1.0),
        train=TrainConfig(
            steps=1200, batch_size=32, eval_every=300, checkpoint_every=300, log_every=10, eval_batch_size=100
        ),
    )


# ----------------------------------------------------------------------------------------------------
# LRA: S4 / S4D (state-spaces/s4, docs/experiments.md §LRA published configurations)

# task -> (task name, task options, n_layers, d_model, d_state, prenorm, dropout, batch, lr, ssm_lr,
#          steps, warmup, seed)
_S4_LRA = {
    "listops": ("listops", {}, 6, 256, 4, False, 0.0, 32, 0.01, 1e-3, 120_000, 12_000, 3333),
    "text": ("text", {}, 6, 256, 4, True, 0.0, 16, 0.01, 1e-3, 50_000, 5_000, 3333),
    "retrieval": ("retrieval", {}, 6, 256, 4, True, 0.0, 64, 0.01, 1e-3, 50_000, 5_000, 3333),
    "image": ("image", {}, 6, 512, 64, False, 0.1, 50, 0.01, 1e-3, 180_000, 18_000, 2222),
    "pathfinder": ("pathfinder", {}, 6, 256, 64, True, 0.0, 64, 0.004, 1e-3, 500_000, 50_000, 3333),
    "pathx": ("pathx", {}, 6, 256, 64, True, 0.0, 16, 0.001, 1e-3, 500_000, 50_000, 3333),
}

# S5 (docs/experiments.md §LRA published configurations):
# (n_layers, d_model, ssm_size P, blocks J, dropout, batch, ssm_lr, lr_factor, wd, train examples, epochs,
#  warmup epochs)
_S5_LRA = {
    "listops": (8, 128, 16, 8, 0.0, 50, 1e-3, 3.0, 0.04, 96_000, 40, 1),
    "text": (6, 256, 192, 12, 0.1, 50, 1e-3, 4.0, 0.07, 25_000, 35, 0),
    "retrieval": (6, 128, 256, 16, 0.0, 32, 1e-3, 2.0, 0.05, 147_086, 20, 1),
    "image": (6, 512, 384, 3, 0.1, 50, 1e-3, 4.5, 0.07, 45_000, 250, 1),
    "pathfinder": (6, 192, 256, 8, 0.05, 64, 9e-4, 5.0, 0.03, 160_000, 200, 1),
    "pathx": (6, 128, 256, 16, 0.0, 32, 6e-4, 3.0, 0.06, 160_000, 75, 1),
}


def _eval_every(steps: int) -> int:
    return max(1, min(5_000, steps // 40))


def _dt_options(task: str) -> dict:
    return {"dt_min": 1e-4} if task == "pathx" else {}  # Path-X: dt in [1e-4, 0.1] (s4-pathx.yaml, S5 script)


def _s4_family(task: str, mixer: str) -> Config:
    name, options, n_layers, d_model, d_state, prenorm, dropout, batch, lr, ssm_lr, steps, warmup, seed = _S4_LRA[task]
    every = _eval_every(steps)
    mixer_options = {"d_state": d_state, "bidirectional": True, **_dt_options(task)}
    return Config(
        name=f"{task}_{mixer}",
        task=TaskConfig(name=name, options=dict(options)),
        model=ModelConfig(
            mixer=mixer,
            d_model=d_model,
            n_layers=n_layers,
            mixer_options=mixer_options,
            pooling="auto",
            norm="batch",
            prenorm=prenorm,
            dropout=dropout,
            ff="glu",
        ),
        optim=OptimConfig(
            lr=lr, ssm_lr=ssm_lr, weight_decay=0.05, schedule="cosine", warmup_steps=warmup, grad_clip=0.0
        ),
        train=TrainConfig(steps=steps, batch_size=batch, eval_every=every, checkpoint_every=every, seed=seed),
    )


def _s5(task: str) -> Config:
    n_layers, d_model, ssm_size, blocks, dropout, batch, ssm_lr, factor, wd, n_train, epochs, warm = _S5_LRA[task]
    per_epoch = n_train // batch
    steps = per_epoch * epochs
    every = _eval_every(steps)
    return Config(
        name=f"{task}_s5",
        task=TaskConfig(name=task, options={}),
        model=ModelConfig(
            mixer="s5",
            d_model=d_model,
            n_layers=n_layers,
            mixer_options={"d_state": ssm_size, "blocks": blocks, "bidirectional": True, **_dt_options(task)},
            pooling="auto",
            norm="batch",
            prenorm=True,
            dropout=dropout,
            ff="glu",
        ),
        optim=OptimConfig(
            lr=ssm_lr * factor,
            ssm_lr=ssm_lr,
            weight_decay=wd,
            schedule="cosine",
            warmup_steps=per_epoch * warm,
            grad_clip=0.0,
        ),
        train=TrainConfig(steps=steps, batch_size=batch, eval_every=every, checkpoint_every=every),
    )


# ----------------------------------------------------------------------------------------------------
# synthetic memory tasks with fast-weight / linear-recurrence mixers


def _synthetic(task: str, mixer: str, mixer_options: dict, d_model: int = 64, n_layers: int = 2) -> Config:
    return Config(
        name=f"{task}_{mixer}",
        task=TaskConfig(name=task, options={}),
        model=ModelConfig(
            mixer=mixer,
            d_model=d_model,
            n_layers=n_layers,
            mixer_options=dict(mixer_options),
            pooling="auto",
            norm="layer",
            prenorm=True,
        ),
        optim=OptimConfig(lr=1e-3, ssm_lr=1e-3, weight_decay=0.1, warmup_steps=500, grad_clip=1.0),
        train=TrainConfig(steps=20_000, batch_size=64, eval_every=1_000, checkpoint_every=1_000),
    )


_SYNTHETIC = {
    "mqar_deltanet": ("mqar", "deltanet", {}),
    "mqar_gated_deltanet": ("mqar", "gated_deltanet", {}),  # short conv 4, L2 q/k, gated RMSNorm output
    "mqar_delta_product": ("mqar", "delta_product", {"num_householder": 2}),
    "mqar_mlstm": ("mqar", "mlstm", {}),
    "mqar_mamba2": ("mqar", "mamba2", {"d_state": 64, "head_dim": 32}),  # E = 128: 4 heads of 32
    "mqar_hawk": ("mqar", "hawk", {}),
    "mqar_linear_attention": ("mqar", "linear_attention", {}),
    "selective_copying_deltanet": ("selective_copying", "deltanet", {}),
    "induction_linear_attention": ("induction", "linear_attention", {}),
    "copying_lru": ("copying", "lru", {}),
    "adding_lru": ("adding", "lru", {}),
}


# ----------------------------------------------------------------------------------------------------
# irregularly sampled sequences: the same model fed the true elapsed times (default) or dt = 1
# (``task.options.use_dt=false``); CPU-scale settings, not a published configuration

_IRREGULAR = {
    "s4d": {"d_state": 8, "dt_min": 0.01, "dt_max": 0.5},  # with dt: a scan over D·N/2 channels
    "s5": {"d_state": 32, "dt_min": 0.01, "dt_max": 0.5},
    "s4": {"d_state": 8, "dt_min": 0.01, "dt_max": 0.5},  # with dt: a sequential Woodbury scan
    "lssl": {"d_state": 16, "discretization": "zoh", "dt_min": 0.01, "dt_max": 0.5},
    "selective_ssm": {"d_state": 16, "dt_min": 0.01, "dt_max": 0.5},
    "lmu": {"order": 16, "theta": 32.0},
    "hippo_rnn": {"d_state": 16, "measure": "legs"},
}


def _irregular(mixer: str) -> Config:
    """``mixer`` (2 layers, width 32) on ``irregular_sine`` (16 frequency classes, 128 samples at random times)."""
    return Config(
        name=f"irregular_sine_{mixer}",
        task=TaskConfig(name="irregular_sine", options={}),
        model=ModelConfig(
            mixer=mixer,
            d_model=32,
            n_layers=2,
            mixer_options=dict(_IRREGULAR[mixer]),
            pooling="auto",
            norm="layer",
            prenorm=True,
        ),
        optim=OptimConfig(lr=3e-3, ssm_lr=1e-3, weight_decay=0.01, warmup_steps=50, grad_clip=1.0),
        train=TrainConfig(
            steps=600, batch_size=32, eval_every=100, checkpoint_every=100, log_every=10, eval_batch_size=200
        ),
    )


def _registry() -> dict:
    presets = {"demo": demo}
    for task in _S4_LRA:
        for mixer in ("s4", "s4d"):
            presets[f"{task}_{mixer}"] = lambda t=task, m=mixer: _s4_family(t, m)
        presets[f"{task}_s5"] = lambda t=task: _s5(t)
    for name, (task, mixer, options) in _SYNTHETIC.items():
        presets[name] = lambda t=task, m=mixer, o=options: _synthetic(t, m, o)
    for mixer in _IRREGULAR:
        presets[f"irregular_sine_{mixer}"] = lambda m=mixer: _irregular(m)
    return presets


PRESETS = _registry()


def list_presets() -> list:
    """Names of all presets, ``demo`` first."""
    return list(PRESETS)


def get_preset(name: str) -> Config:
    """A fresh ``Config`` for preset ``name``; unknown names raise ``ValueError`` listing the choices."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {list_presets()}")
    config = PRESETS[name]()
    return dataclasses.replace(config, name=name)
