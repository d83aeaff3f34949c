"""The six capability suites of issue 16: their grids per scale and the published numbers beside them.

Each ``_name(scale)`` returns the list of ``Run`` of that suite; the docstring states the protocol, the paper
it follows and what ``--scale cpu`` changes (docs/experiments.md §Capability suites repeats it). ``"paper"``
holds the papers' sizes (for a GPU); ``"smoke"`` is one tiny one-step run per suite for the tests.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from algornn.experiments.suite.spec import Reference, Run, Suite
from algornn.layers import MIXERS

SMOKE = dict(d_model=8, steps=1, batch_size=4, n_layers=1)
_SMOKE_DATA = dict(n_train=8, n_val=4, n_test=4)


# smoke scale: state sizes and heads that fit a width of 8
_SMOKE_OPTIONS = {
    "s4d": {"d_state": 4},
    "deltanet": {"num_heads": 2, "chunk_size": 16},
    "linear_attention": {"num_heads": 2, "chunk_size": 16},
    "selective_ssm": {"d_state": 4},
    "mamba2": {"d_state": 4, "head_dim": 4, "chunk_size": 16},
}


def _options(scale: str, mixer: str, options: dict | None = None) -> dict:
    """``options`` (a variant's own) over, at smoke scale, the small sizes of ``_SMOKE_OPTIONS``."""
    base = dict(_SMOKE_OPTIONS.get(mixer, {})) if scale == "smoke" else {}
    return {**base, **(options or {})}


def _lrs(lo_exp: float, hi_exp: float, n: int) -> list:
    """``n`` learning rates log-spaced over [10^lo, 10^hi] (Zoology's ``np.logspace(-4, -2, 4)``)."""
    return [float(f"{v:.3g}") for v in np.logspace(lo_exp, hi_exp, n)]


def _cpu_stop(scale: str) -> float:
    """``Run.stop_at_accuracy`` of the cpu grids that stop early (99 % training accuracy); 0 (off) elsewhere."""
    return 0.99 if scale == "cpu" else 0.0


def _run(scale: str, *, mixer: str, steps: int, options: dict | None = None, **fields) -> Run:
    """A ``Run`` with the suites' shared defaults: the label is the mixer, the mixer options are ``options`` over
    the smoke sizes (``_options``), 1 layer at smoke scale (else 2) and 10 % warmup (none at smoke scale)."""
    fields.setdefault("label", mixer)
    fields.setdefault("n_layers", 1 if scale == "smoke" else 2)
    fields.setdefault("warmup_steps", 0 if scale == "smoke" else steps // 10)
    return Run(mixer=mixer, mixer_options=_options(scale, mixer, options), steps=steps, **fields)


# ------------------------------------------------------------------------------------------------ memory
MEMORY_MIXERS = tuple(MIXERS)  # every mixer of the library, in the registry's order
# Beside the defaults (cpu and paper scales): LMU with its window θ (default 100 steps) set to the sequence length,
# as the LMU paper sets θ to the length of the task (psMNIST: θ = 784); (label, mixer, options of the length).
# The levers of the gated delta rules are the suite ``memory_levers``.
MEMORY_EXTRA = (("lmu_theta_L", "lmu", lambda length: {"theta": float(length)}),)


def memory(scale: str) -> list:
    """Long-range presence (issue 16): label = whether symbol 1 occurs in the first 10 of L random tokens
    (it occurs nowhere else: the probe of the issue, a pure one-bit memory), read out at the last position;
    every mixer with its default options.

    Both scales train as the issue's probe: Adam at a constant learning rate (the SSM parameters too), no weight
    decay, width 64, 2 layers, batch 32. paper: L ∈ {512, 2048}, 1000 steps, best of lr ∈ {1e-3, 3e-3, 1e-2},
    10 000 training examples. cpu: L = 512 only, at most 200 steps at the probe's lr 3e-3, 6 400 training
    examples (one pass), 500 validation / test examples; a run stops once a 10-step window of training accuracy
    (320 examples it has not trained on yet) reaches 99 %. The best of the 3 learning rates at cpu scale is the
    suite ``memory_lrs`` (the same runs at lr 1e-2, 3e-3 and 1e-3; ~1 h on 2 cores): the 3 rates do not fit the
    30-minute budget of a cpu suite, because the mixers that stay at chance train all 200 steps at every rate
    (0.15–1.2 s per step at this shape). A run cannot be cut short when it is still at chance: the mixers that
    learn the probe sit at the chance loss ln 2 until a sharp transition as late as step 110–180 (S4 at lr 3e-3:
    loss 0.718 at step 100, 100 % at step 190; LRU at lr 1e-2: 0.708 at step 100). Calibration (2026-12-01/02):
    S4D at lr 3e-3 reaches 100 % at step 200 but 56 % at step 100; at width 32 it reaches 65 % at step 200
    (lr 3e-3) and 50 % (lr 1e-2), so the cpu grid keeps width 64.
    """
    return _memory_grid(scale, cpu_lrs=[3e-3])


def memory_lrs(scale: str) -> list:
    """The presence probe of ``memory`` at its cpu scale with the best of 3 learning rates (issue 16 §3): every
    mixer with its default options at L = 512, lr 1e-2, 3e-3 and 1e-3 tried from the largest down, the same
    training otherwise (width 64, 2 layers, batch 32, at most 200 steps, the 99 % stop); a cell whose run reached
    99 % validation accuracy skips its remaining learning rates (``solved_at``): the best of 3 is then already
    within 1 % of the ceiling. paper: as ``memory``'s paper scale. Its lr-3e-3 runs are ``memory``'s (the same
    names and configs: copy them into this suite's root and they are skipped)."""
    return _memory_grid(scale, cpu_lrs=[1e-2, 3e-3, 1e-3])


def _memory_grid(scale: str, *, cpu_lrs: list) -> list:
    variants = [(mixer, mixer, lambda length: {}) for mixer in MEMORY_MIXERS] + list(MEMORY_EXTRA)
    if scale == "smoke":
        lengths, lrs, d, steps, batch, data = [16], [3e-3], 8, 1, 4, _SMOKE_DATA
        variants = [("s4d", "s4d", lambda length: {})]
    elif scale == "cpu":
        lengths, lrs, d, steps, batch = [512], cpu_lrs, 64, 200, 32
        data = dict(n_train=6400, n_val=500, n_test=500)
    else:
        lengths, lrs, d, steps, batch = [512, 2048], [1e-3, 3e-3, 1e-2], 64, 1000, 32
        data = dict(n_train=10000, n_val=1000, n_test=1000)
    return [
        _presence(scale, "memory", label, mixer, options(length), length, lr, d, steps, batch, data)
        for label, mixer, options in variants
        for length in lengths
        for lr in lrs
    ]


def _presence(scale, suite, label, mixer, options, length, lr, d, steps, batch, data) -> Run:
    """One run of the presence probe as ``memory`` trains it (constant Adam, no weight decay, read out at the last
    position, the 99 % early stop except at smoke scale)."""
    return _run(
        scale,
        suite=suite,
        task="presence",
        label=label,
        mixer=mixer,
        options=options,
        lr=lr,
        d_model=d,
        steps=steps,
        batch_size=batch,
        task_options=dict(seq_len=length, window=min(10, length // 2), **data),
        cell={"seq_len": length},
        pooling="last",
        schedule="constant",
        ssm_lr=lr,
        weight_decay=0.0,
        warmup_steps=0,
        stop_at_accuracy=0.0 if scale == "smoke" else 0.99,
    )


# The mixers that stay at chance on ``memory`` at L = 512 (cpu scale, 200 steps; experiments/results/suite_memory.md)
RANGE_MIXERS = ("s5", "gla", "retnet", "gated_deltanet", "selective_ssm", "hawk", "mamba2", "mlstm", "delta_product")


def memory_range(scale: str) -> list:
    """The presence probe of ``memory`` at shorter lengths and with more steps, for the mixers that stay at chance
    there at L = 512 (issue 16 §3): does the mixer learn the task at all (then L = 512 is beyond what it reaches
    from its initialisation in the step budget), or nowhere (then it is a defect)?

    Same training as ``memory`` (width 64, 2 layers, batch 32, constant Adam, 99 % early stop).
    cpu: L ∈ {64, 256}, at most 400 steps, lr 3e-3 (the issue's probe), 12 800 training examples (one pass).
    paper: L ∈ {64, 128, 256, 512, 1024, 2048}, 2000 steps, lr ∈ {1e-2, 3e-3, 1e-3}, 64 000 examples.
    """
    if scale == "smoke":
        lengths, lrs, mixers, d, steps, batch, data = [16], [3e-3], ("hawk",), 8, 1, 4, _SMOKE_DATA
    elif scale == "cpu":
        lengths, lrs, mixers, d, steps, batch = [64, 256], [3e-3], RANGE_MIXERS, 64, 400, 32
        data = dict(n_train=12800, n_val=500, n_test=500)
    else:
        lengths, lrs, mixers, d = [64, 128, 256, 512, 1024, 2048], [1e-2, 3e-3, 1e-3], RANGE_MIXERS, 64
        steps, batch, data = 2000, 32, dict(n_train=64000, n_val=1000, n_test=1000)
    return [
        _presence(scale, "memory_range", mixer, mixer, {}, length, lr, d, steps, batch, data)
        for mixer in mixers
        for length in lengths
        for lr in lrs
    ]


def memory_readout(scale: str) -> list:
    """The presence probe of ``memory`` with a fixed query token at the last position (``query_token=True``), for
    the mixers at chance there at L = 512 and S4D as the control (issue 16 §3): is the failure how far the state
    reaches, or the readout? Without the query the answer is read at a random symbol, and many of these mixers read
    their state through functions of the current token (SelectiveSSM and Mamba2: C_t and the gate silu(z_t);
    GLA, RetNet, Gated DeltaNet, DeltaProduct, mLSTM: the output gate; Hawk: its gate branch); S5 and S4D read it
    through fixed C. The same bit, the same L tokens before the query.

    Same training as ``memory`` (width 64, 2 layers, batch 32, constant Adam, 99 % early stop).
    cpu: L = 512, at most 200 steps, lr 3e-3 (``memory``'s cpu runs, plus the query), 6 400 training examples.
    paper: L ∈ {512, 2048}, 1000 steps, lr ∈ {1e-2, 3e-3, 1e-3}, 10 000 examples.
    """
    if scale == "smoke":
        lengths, lrs, mixers, d, steps, batch, data = [16], [3e-3], ("selective_ssm",), 8, 1, 4, _SMOKE_DATA
    elif scale == "cpu":
        lengths, lrs, mixers, d, steps, batch = [512], [3e-3], ("s4d",) + RANGE_MIXERS, 64, 200, 32
        data = dict(n_train=6400, n_val=500, n_test=500)
    else:
        lengths, lrs, mixers, d = [512, 2048], [1e-2, 3e-3, 1e-3], ("s4d",) + RANGE_MIXERS, 64
        steps, batch, data = 1000, 32, dict(n_train=10000, n_val=1000, n_test=1000)
    data = dict(data, query_token=True)
    return [
        _presence(scale, "memory_readout", f"{mixer}_query", mixer, {}, length, lr, d, steps, batch, data)
        for mixer in mixers
        for length in lengths
        for lr in lrs
    ]


def memory_levers(scale: str) -> list:
    """Why the gated delta rules (Gated DeltaNet, DeltaProduct) stay at chance on ``memory``: the probe at L = 64
    (and L = 512 with both levers) for their two suspects, crossed (issue 16 §3):

    - the decay init: Mamba-2's (Δ log-uniform in [1e-3, 1e-1], A ~ U(1, 16)) or a slow one (Δ in [1e-4, 1e-3]);
      with 4 heads the slowest of Mamba-2's decays is a lottery of the init seed (``memory_gradient --seeds``);
    - the output gate ``RMSNorm(o) ⊙ silu(x W_g)`` (the papers' block) on or off.

    And mLSTM without its output block's per-head norm and ``silu(z)`` gate (``mlstm_plain``: ``output_norm=False,
    output_gate=False``; with them it learns L = 64 but not L = 256 in 400 steps, ``memory_range``), and
    DeltaProduct with one Householder step per token (``delta_product_n1_slowdt_nogate``, both levers): with n = 1
    it is Gated DeltaNet (the same gradient from position 0 at every L, ``memory_gradient``), with the paper's n = 2
    it forgets about twice as fast per token at init. And two mixers with their defaults given 1500 steps: mLSTM at
    L = 256 (``mlstm``; it sits at chance far beyond the 400 steps of ``memory_range`` before it learns) and
    SelectiveSSM at the issue's L = 512 (``selective_ssm``; 200 steps in ``memory``); and SelectiveSSM at L = 512
    for 1500 steps with the slow Δ init (``selective_ssm_slowdt``), Mamba's expand = 2 (``selective_ssm_expand2``;
    the layer's default is 1) or slower decay rates A_n = −0.01·(n + 1) (``selective_ssm_a001``; Mamba's are
    −(n + 1)): a token's write Δ·B and its survival exp(−|A| Σ Δ) both depend on Δ, so with A_n ≤ −1 it reaches
    L steps ahead with at most 1/(e·L); the slow Δ init cannot lift that bound, smaller |A| does
    (docs/layers.md §The memory probe: what each mixer learns with its defaults). And S4D with S6's A init,
    Λ_n = −(n + 1) (``s4d_real``, S4D-Real: time-invariant, no selectivity) at L = 512 for 200 steps: does a
    real spectrum alone miss the probe? And with Δ ∈ [1e-5, 1e-3] (``s4d_real_slowdt``: every decay 100× slower,
    as ``selective_ssm_a001``'s, the input gain 100× smaller too).

    Same training as ``memory`` (width 64, 2 layers, batch 32, constant Adam, 99 % early stop), init seed 0.
    cpu: L = 64 for the 4 combinations and L = 512 for slow decay without the gate, mlstm_plain at L = 256 and
    512, mlstm at L = 256, the four selective_ssm variants and both s4d_real at L = 512, at most 200 steps (400 for
    mlstm_plain at L = 256, as ``memory_range``; 1500 for mlstm and selective_ssm*), lr 3e-3 (the issue's probe),
    6 400 training examples (12 800 for 400 steps, 48 000 for 1500).
    paper: the same at L ∈ {64, 512, 2048}, 1000 steps, lr ∈ {1e-2, 3e-3, 1e-3}, 10 000 examples.
    """
    inits = {"mamba2dt": {}, "slowdt": {"dt_min": 1e-4, "dt_max": 1e-3}}
    variants = {
        f"{mixer}_{init}_{'gate' if gate else 'nogate'}": (mixer, {**dt, "output_gate": gate})
        for mixer in ("gated_deltanet", "delta_product")
        for init, dt in inits.items()
        for gate in (True, False)
    }
    crossed = list(variants)  # the 8 (mixer, init, gate) combinations
    variants["mlstm_plain"] = ("mlstm", {"output_norm": False, "output_gate": False})
    n1 = {**inits["slowdt"], "output_gate": False, "num_householder": 1}
    variants["delta_product_n1_slowdt_nogate"] = ("delta_product", n1)
    variants["mlstm"] = ("mlstm", {})
    variants["selective_ssm"] = ("selective_ssm", {})
    variants["selective_ssm_slowdt"] = ("selective_ssm", dict(inits["slowdt"]))
    variants["selective_ssm_expand2"] = ("selective_ssm", {"expand": 2})
    variants["selective_ssm_a001"] = ("selective_ssm", {"a_scale": 0.01})
    variants["s4d_real"] = ("s4d", {"init": "real"})  # S6's A init (Λ_n = −(n+1)), time-invariant
    variants["s4d_real_slowdt"] = ("s4d", {"init": "real", "dt_min": 1e-5, "dt_max": 1e-3})  # 100x slower decays
    if scale == "smoke":
        lrs, d, batch = [3e-3], 8, 4
        plan = [("gated_deltanet_slowdt_nogate", 16, 1, _SMOKE_DATA)]
    elif scale == "cpu":
        lrs, d, batch = [3e-3], 64, 32
        data = dict(n_train=6400, n_val=500, n_test=500)  # one pass of 200 steps
        plan = [(label, 64, 200, data) for label in crossed]
        at512 = ("gated_deltanet", "delta_product", "delta_product_n1")
        plan += [(f"{m}_slowdt_nogate", 512, 200, data) for m in at512]
        plan += [("mlstm_plain", 256, 400, dict(data, n_train=12800)), ("mlstm_plain", 512, 200, data)]
        plan += [
            ("mlstm", 256, 1500, dict(data, n_train=48000)),
            ("selective_ssm", 512, 1500, dict(data, n_train=48000)),
            ("selective_ssm_slowdt", 512, 1500, dict(data, n_train=48000)),
            ("selective_ssm_expand2", 512, 1500, dict(data, n_train=48000)),
            ("selective_ssm_a001", 512, 1500, dict(data, n_train=48000)),
            ("s4d_real", 512, 200, data),
            ("s4d_real_slowdt", 512, 200, data),
        ]
    else:
        lrs, d, batch = [1e-2, 3e-3, 1e-3], 64, 32
        data = dict(n_train=10000, n_val=1000, n_test=1000)
        plan = [(label, length, 1000, data) for length in (64, 512, 2048) for label in variants]
    return [
        _presence(scale, "memory_levers", label, *variants[label], length, lr, d, steps, batch, data)
        for label, length, steps, data in plan
        for lr in lrs
    ]


# ------------------------------------------------------------------------------------------------ mqar
# Zoology's recurrent families as they exist here: time-invariant (s4d), gated linear recurrences (hawk,
# mamba2), linear attention and delta rules; softmax attention is the baseline layers.Attention. There is no
# Hyena/H3 (gated convolution) mixer in the library. Attention (softmax, RoPE) is Zoology's reference that solves
# every cell.
MQAR_MIXERS = ("attention", "s4d", "hawk", "mamba2", "linear_attention", "deltanet", "gated_deltanet")
MQAR_CPU_MIXERS = MQAR_MIXERS[:6]
# The recall suites (mqar, selective copying, induction) give the fast-weight mixers the short convolution of
# Zoology's linear-attention baselines and of Yang et al. 2024's DeltaNet (see ``mqar``): without position
# information a 2-layer linear attention cannot tell which token came just before another.
RECALL_OPTIONS = {m: {"short_conv": 4} for m in ("linear_attention", "deltanet")}


def mqar(scale: str) -> list:
    """Multi-query associative recall as Zoology (Arora et al. 2023, Fig. 2): 2 layers, accuracy on the query
        positions, best learning rate per (mixer, L, width) cell.

        Both scales use Zoology's layout (queries at even offsets with power-law gaps, random filler, distinct
        values), and the fast-weight mixers (linear attention, the delta rules) get a short convolution of width 4
        on q, k, v, as Zoology's linear-attention baselines (Based) and the DeltaNet of Yang et al. 2024 have one: the
        library's defaults follow Katharopoulos et al. 2020 and Schlag et al. 2021, which have none, and without it a
        2-layer DeltaNet stays at 1 / pairs (it picks one of the context's values, never the bound one; 25 % after
        1 000 steps at (64, 4) against 99 % in 350 steps with it). Mamba-2 and Hawk have their own short conv.
        paper: vocabulary 8192 (4096 keys, 4096 values), (L, pairs) ∈ {(64, 4), (128, 8), (256, 16)}, width
        ∈ {64, 128}, lr ∈ logspace(−4, −2, 4), 100 000 training examples,
        12 500 steps of batch 64 (8 of Zoology's 64 epochs).
        cpu: 32 keys and 32 values, (L, pairs) ∈ {(64, 4), (128, 8)}, width 64 only, lr ∈ {1e-2, 3e-3} (Zoology's
        two largest; in that order), at most 600 steps of batch 32 on 20 000 examples (one pass), without
        gated_deltanet; a run stops once a 10-step window reaches 99 % training accuracy and a cell that reached 99 %
        validation accuracy skips its second learning rate. (The first cpu grid, vocabulary 256, widths 32 and 64,
        150 steps and no short conv on the fast-weight mixers, left every run at chance; the second, lr ∈ {3e-3,
        1e-3}, had 1e-3 behind 3e-3 in every cell.) Softmax attention (``layers.Attention``: 4 heads, rotary positions,
    no short conv) is Zoology's reference; no gated convolution (H3, Hyena, BaseConv) is in the library, so the
    published "gated convolutions need a width growing with L" is not tested here.
    """
    if scale == "smoke":
        cells, widths, lrs, mixers, steps, batch = [(16, 2)], [8], [1e-3], ("deltanet",), 1, 4
        half, data = 7, _SMOKE_DATA
    elif scale == "cpu":
        cells, widths, lrs, mixers, steps, batch = [(64, 4), (128, 8)], [64], [1e-2, 3e-3], MQAR_CPU_MIXERS, 600, 32
        half, data = 32, dict(n_train=20000, n_val=200, n_test=200)
    else:
        cells, widths, lrs, mixers, steps = [(64, 4), (128, 8), (256, 16)], [64, 128], _lrs(-4, -2, 4), MQAR_MIXERS, 0
        batch, half, data = 64, 4096, dict(n_train=100000, n_val=3000, n_test=3000)  # Zoology's halves of 8192
        steps = 64 * 100000 // batch // 8  # 8 of Zoology's 64 epochs: sized for one GPU day over the grid
    layout = dict(placement="zoology", filler="random", distinct_values=True)  # Zoology's query layout
    return [
        _run(
            scale,
            suite="mqar",
            task="mqar",
            mixer=mixer,
            lr=lr,
            d_model=d,
            steps=steps,
            batch_size=batch,
            task_options=dict(seq_len=length, n_pairs=pairs, n_keys=half, n_values=half, **layout, **data),
            cell={"seq_len": length, "pairs": pairs},
            options=RECALL_OPTIONS.get(mixer),
            stop_at_accuracy=_cpu_stop(scale),
        )
        for mixer in mixers
        for length, pairs in cells
        for d in widths
        for lr in lrs
    ]


# ------------------------------------------------------------------------------------------------ mamba tasks
# Gu & Dao 2023 Table 1: S4 without gating ~ our s4d, S6 without gating ~ selective_ssm (Mamba's SSM alone
# in a residual block), the full Mamba block ~ mamba2 here (its SSD successor; the Mamba-1 block is not a
# mixer of the library).
SELECTIVE_MIXERS = ("s4d", "selective_ssm", "mamba2", "deltanet", "hawk")


def selective_copying(scale: str) -> list:
    """Selective copying as Mamba (Gu & Dao 2023, §4.1.1, App. E.1): 16 tokens from a vocabulary of 16 at
    random positions among noise, to be reproduced in order after the delimiter; 2 layers; DeltaNet with the
    short conv of the recall suites (``RECALL_OPTIONS``).

    paper: L = 4096, width 64, 400 000 steps of batch 64 at lr 1e-4 (cosine here), lr ∈ {1e-4, 1e-3}.
    cpu: L = 128, width 64, at most 300 steps of batch 32 on 4 000 examples, lr ∈ {3e-3, 1e-3} in that order; a
    run stops once a 10-step window reaches 99 % training accuracy and a cell that reached 99 % validation
    accuracy skips its second learning rate (the L = 256 grid without the stops: ~30 min on 2 cores).
    """
    if scale == "smoke":
        length, lrs, mixers, d, steps, batch, n_copy, data = 16, [1e-3], ("selective_ssm",), 8, 1, 4, 4, _SMOKE_DATA
    elif scale == "cpu":
        length, lrs, mixers, d, steps, batch, n_copy = 128, [3e-3, 1e-3], SELECTIVE_MIXERS, 64, 300, 32, 16
        data = dict(n_train=4000, n_val=200, n_test=200)
    else:
        length, lrs, mixers, d, steps, batch, n_copy = 4096, [1e-4, 1e-3], SELECTIVE_MIXERS, 64, 400_000, 64, 16
        data = dict(n_train=100000, n_val=1000, n_test=1000)
    return _copying_runs(scale, "selective_copying", mixers, lrs, length, d, steps, batch, n_copy, data)


def _copying_runs(scale, suite, mixers, lrs, length, d, steps, batch, n_copy, data) -> list:
    """The runs of a selective-copying grid: every mixer (DeltaNet with the recall suites' short conv) × rate."""
    return [
        _run(
            scale,
            suite=suite,
            task="selective_copying",
            mixer=mixer,
            lr=lr,
            d_model=d,
            steps=steps,
            batch_size=batch,
            task_options=dict(seq_len=length, n_copy=n_copy, n_symbols=16, **data),
            cell={"seq_len": length},
            options=RECALL_OPTIONS.get(mixer),
            stop_at_accuracy=_cpu_stop(scale),
        )
        for mixer in mixers
        for lr in lrs
    ]


def selective_copying_long(scale: str) -> list:
    """Selective copying as ``selective_copying``, given 10x the steps: does S6 (``selective_ssm``) overtake S4
    (``s4d``) once trained longer, as in the paper (S4 18.3 %, S6 97.0 % after 400 000 steps), or does the
    300-step ordering (S6 below S4) persist? The full block (``mamba2``) beside them.

    cpu: L = 128, width 64, 2 layers, 3 000 steps of batch 32 on 96 000 examples (one pass: nothing is seen
    twice), lr 3e-3 (the best rate of S4D and S6 at 300 steps), cosine with 10 % warmup, the 99 % early stop.
    paper: as ``selective_copying``'s paper scale.
    """
    if scale == "smoke":
        length, lrs, mixers, d, steps, batch, n_copy, data = 16, [1e-3], ("s4d",), 8, 1, 4, 4, _SMOKE_DATA
    elif scale == "cpu":
        length, lrs, mixers, d, steps, batch, n_copy = 128, [3e-3], ("s4d", "selective_ssm", "mamba2"), 64, 3000, 32, 16
        data = dict(n_train=96000, n_val=200, n_test=200)
    else:
        return [replace(r, suite="selective_copying_long") for r in selective_copying(scale)]
    return _copying_runs(scale, "selective_copying_long", mixers, lrs, length, d, steps, batch, n_copy, data)


INDUCTION_MIXERS = ("s4d", "selective_ssm", "mamba2", "linear_attention", "deltanet", "hawk")


def induction(scale: str) -> list:
    """Induction heads as Mamba (Gu & Dao 2023, §4.1.2, App. E.1): vocabulary 16, 2 layers, trained at
    L = 256, the best checkpoint evaluated at 64 … 4096 (paper: up to 2^20). Linear attention and DeltaNet
    with the short conv of the recall suites (``RECALL_OPTIONS``: the Mamba paper's attention baselines have
    positional encodings, ours have none, and an induction head needs the previous token).

    paper: train L = 256, width 64, 8 192 steps of batch 8, lr ∈ {1e-4, 1e-3}; test lengths 2^6 … 2^14.
    cpu: train L = 128, width 64, at most 600 steps of batch 32 on 20 000 examples (one pass), lr 3e-3 (one
    rate), a run stops once a 10-step window reaches 99 % training accuracy; test lengths 2^6 … 2^11 with 64
    examples each. (The first cpu grid, width 32 and 300 steps, left every mixer at chance; DeltaNet at width 64
    reaches 99 % at step 250.)
    """
    if scale == "smoke":
        length, lrs, mixers, d, steps, batch, data = 16, [1e-3], ("mamba2",), 8, 1, 4, _SMOKE_DATA
        lengths, n_extra = (8, 32), 4
    elif scale == "cpu":
        length, lrs, mixers, d, steps, batch = 128, [3e-3], INDUCTION_MIXERS, 64, 600, 32
        data, lengths, n_extra = dict(n_train=20000, n_val=200, n_test=200), tuple(2**k for k in range(6, 12)), 64
    else:
        length, lrs, mixers, d, steps, batch = 256, [1e-4, 1e-3], INDUCTION_MIXERS, 64, 8192, 8
        data, lengths, n_extra = dict(n_train=65536, n_val=1000, n_test=1000), tuple(2**k for k in range(6, 15)), 256
    return [
        _run(
            scale,
            suite="induction",
            task="induction",
            mixer=mixer,
            lr=lr,
            d_model=d,
            steps=steps,
            batch_size=batch,
            task_options=dict(seq_len=length, n_symbols=16, **data),
            cell={"train_len": length},
            options=RECALL_OPTIONS.get(mixer),
            extra_lengths=lengths,
            extra_n_test=n_extra,
            eval_batch_size=16 if scale != "smoke" else 4,
            stop_at_accuracy=_cpu_stop(scale),
        )
        for mixer in mixers
        for lr in lrs
    ]


# ------------------------------------------------------------------------------------------------ capacity
# (label, mixer, options): linear attention vs the delta rule, feature maps elu+1 vs DPFP ν = 1, 2.
CAPACITY_VARIANTS = (
    ("la_elu", "linear_attention", {"feature_map": "elu+1"}),
    ("la_dpfp1", "linear_attention", {"feature_map": "dpfp", "dpfp_nu": 1}),
    ("la_dpfp2", "linear_attention", {"feature_map": "dpfp", "dpfp_nu": 2}),
    ("delta_elu", "deltanet", {"feature_map": "elu+1"}),
    ("delta_dpfp1", "deltanet", {"feature_map": "dpfp", "dpfp_nu": 1}),
    ("delta_dpfp2", "deltanet", {"feature_map": "dpfp", "dpfp_nu": 2}),
)


def retrieval_capacity(scale: str) -> list:
    """Associative-retrieval capacity as Schlag, Irie & Schmidhuber 2021 §6.1: setting 1 shows S unique keys
    with their values and queries one; setting 2 shows 2S items whose keys repeat, the latest value counts.
    One layer; accuracy at the query vs S.

    Schlag et al. feed each key together with its value as one input; here they are two tokens (``k_1 v_1 …``),
    so every variant gets a causal short conv of width 2 on q, k, v (``short_conv=2``): at a value's position
    the key and value projections see both tokens, as the paper's layer sees the pair. Without it a 1-layer model
    cannot bind a value to its key (the first cpu grid, 200 steps and no conv, left every run at chance, val loss
    log S); with it linear attention reaches 25 % (setting 1) and the delta rule 29 % (setting 2) at S = 20 in
    600 steps (chance 5 %, still rising).
    paper: S ∈ {20, 40, 60, 80, 120}, width 64, one head, 1 layer, both settings, 20 000 steps of batch 32,
    lr ∈ {1e-3, 3e-3}. cpu: S ∈ {20, 60}, width 32, at most 600 steps of batch 32 on 20 000 examples (a run
    stops once a 10-step window reaches 99 % training accuracy), lr 3e-3, the variants la_elu, la_dpfp1,
    delta_elu, delta_dpfp1 (ν = 2 at paper scale only).
    """
    if scale == "smoke":
        sizes, lrs, variants, d, steps, batch, settings, data = [4], [1e-3], CAPACITY_VARIANTS[3:4], 8, 1, 4, [2], {}
        data = _SMOKE_DATA
    elif scale == "cpu":
        sizes, lrs, d, steps, batch, settings = [20, 60], [3e-3], 32, 600, 32, [1, 2]
        variants = tuple(v for v in CAPACITY_VARIANTS if not v[0].endswith("dpfp2"))
        data = dict(n_train=20000, n_val=200, n_test=200)
    else:
        sizes, lrs, d, steps, batch, settings = [20, 40, 60, 80, 120], [1e-3, 3e-3], 64, 20000, 32, [1, 2]
        variants, data = CAPACITY_VARIANTS, dict(n_train=100000, n_val=1000, n_test=1000)
    return [
        _run(
            scale,
            suite="retrieval_capacity",
            task="retrieval_capacity",
            label=label,
            mixer=mixer,
            lr=lr,
            d_model=d,
            steps=steps,
            batch_size=batch,
            n_layers=1,
            task_options=dict(n_keys=s, setting=setting, **data),
            cell={"setting": setting, "n_keys": s},
            options={"num_heads": 1, "short_conv": 2, **options},
            stop_at_accuracy=_cpu_stop(scale),
        )
        for label, mixer, options in variants
        for setting in settings
        for s in sizes
        for lr in lrs
    ]


# ------------------------------------------------------------------------------------------------ state tracking
# (label, mixer, options): with and without negative eigenvalues (Grazzi et al. 2025).
STATE_VARIANTS = (
    ("deltanet", "deltanet", {}),
    ("deltanet_neg", "deltanet", {"negative_eigenvalues": True}),
    ("selective_ssm", "selective_ssm", {}),
    ("selective_ssm_neg", "selective_ssm", {"negative_eigenvalues": True}),
    ("mamba2", "mamba2", {}),
    ("mamba2_neg", "mamba2", {"negative_eigenvalues": True}),
)


def state_tracking(scale: str) -> list:
    """Parity and modular arithmetic (mod 5, no brackets) as Grazzi et al. 2025 §5.2 / Delétang et al. 2023:
    train on lengths 3–40, test on 40–256, scored at the last token; DeltaNet, SelectiveSSM and Mamba2 with and
    without negative eigenvalues. The report's number is the test accuracy (the lengths never trained on).

    paper: width 128, 2 layers, 100 000 steps of batch 256 (Grazzi et al.), lr ∈ {1e-4, 3e-4, 1e-3}.
    cpu: width 32, 2 layers, 400 steps of batch 32 on 4 000 examples, lr 3e-3 (one rate), 200 test rows.
    """
    if scale == "smoke":
        tasks, lrs, variants, d, steps, batch = ["parity"], [1e-3], STATE_VARIANTS[1:2], 8, 1, 4
        ranges, data = dict(min_len=3, max_len=8, test_min_len=8, test_max_len=16), _SMOKE_DATA
    elif scale == "cpu":
        tasks, lrs, variants, d, steps, batch = (
            ["parity", "modular_arithmetic"],
            [3e-3],
            STATE_VARIANTS,
            32,
            400,
            32,
        )
        ranges, data = (
            dict(min_len=3, max_len=40, test_min_len=40, test_max_len=256),
            dict(n_train=4000, n_val=200, n_test=200),
        )
    else:
        tasks, lrs, variants, d, steps, batch = (
            ["parity", "modular_arithmetic"],
            [1e-4, 3e-4, 1e-3],
            STATE_VARIANTS,
            128,
            100_000,
            256,
        )
        ranges, data = (
            dict(min_len=3, max_len=40, test_min_len=40, test_max_len=256),
            dict(n_train=100000, n_val=1000, n_test=1000),
        )
    runs = []
    for task in tasks:
        for label, mixer, options in variants:
            for lr in lrs:
                task_options = dict(ranges, **data)
                if task == "modular_arithmetic":
                    task_options["modulus"] = 5
                runs.append(
                    _run(
                        scale,
                        suite="state_tracking",
                        task=task,
                        label=label,
                        mixer=mixer,
                        lr=lr,
                        d_model=d,
                        steps=steps,
                        batch_size=batch,
                        task_options=task_options,
                        pooling="none",
                        extra_test=True,
                        options=options,
                    )
                )
    return runs


def state_tracking_long(scale: str) -> list:
    """Parity as ``state_tracking``, given 7.5x the steps, for the two mixers whose negative eigenvalues should
    solve it (Grazzi et al. 2025, Table 2: Mamba with eigenvalues in [−1, 1] learns parity and extrapolates) but
    stay at chance after 400 steps here: SelectiveSSM and Mamba2 with ``negative_eigenvalues=True``. Not yet, or
    not at all?

    cpu: width 32, 2 layers, 3 000 steps of batch 32 on 96 000 examples (one pass), lr 3e-3, train lengths 3–40,
    test 40–256, the 99 % early stop. paper: as ``state_tracking``'s paper scale, parity only, these two variants.
    """
    neg = {"selective_ssm_neg", "mamba2_neg"}
    runs = [replace(r, suite="state_tracking_long") for r in state_tracking(scale) if r.task == "parity"]
    runs = [r for r in runs if r.label in neg or scale == "smoke"]
    if scale != "cpu":
        return runs
    data = dict(n_train=96000, n_val=200, n_test=200)
    return [
        replace(r, steps=3000, task_options={**r.task_options, **data}, stop_at_accuracy=0.99, warmup_steps=300)
        for r in runs
    ]


# ------------------------------------------------------------------------------------------------ registry
_MAMBA = "Gu & Dao 2023 (Mamba)"
# Gu & Dao 2023, Table 1 (L = 4096): the published numbers of both selective-copying suites.
_COPYING_REFERENCES = (
    Reference(f"{_MAMBA}, Table 1 (L = 4096)", "S4 without gating", label="s4d", value=0.183),
    Reference(f"{_MAMBA}, Table 1 (L = 4096)", "S6 without gating", label="selective_ssm", value=0.970),
    Reference(f"{_MAMBA}, Table 1 (L = 4096)", "full Mamba block (S6)", label="mamba2", value=0.998),
)
_ZOOLOGY = "Arora et al. 2023 (Zoology), Fig. 2"
_SCHLAG = "Schlag, Irie & Schmidhuber 2021, §6.1 Fig. 2"
_GRAZZI = "Grazzi et al. 2025, Table 2"

_PROBE = Reference("issue 16 probe", "a long-memory mixer should be near 100 %; chance 50 %")
_DEFECT = Reference("issue 16 §3", "a mixer that learns nowhere is a defect; chance 50 %")


def _presence_suite(grid, title: str, reference: Reference) -> Suite:
    """A suite of the presence probe: named after its grid function, protocol its docstring, x = L, 99 % solved."""
    return Suite(grid.__name__, title, grid.__doc__, grid, x="seq_len", references=(reference,), solved_at=0.99)


SUITES = {
    s.name: s
    for s in (
        _presence_suite(memory, "Long-range presence (did token 1 occur in the first 10 positions?)", _PROBE),
        _presence_suite(
            memory_lrs, "Long-range presence, best of 3 learning rates (memory at lr 1e-2, 3e-3, 1e-3)", _PROBE
        ),
        _presence_suite(
            memory_range,
            "The presence probe at shorter lengths, for the mixers at chance on memory at L = 512",
            _DEFECT,
        ),
        _presence_suite(
            memory_readout, "The presence probe read at a fixed query token: the readout or the reach?", _DEFECT
        ),
        _presence_suite(
            memory_levers,
            "The presence probe's levers: the gated delta rules' decay init, output gate and Householder steps; "
            "mLSTM and SelectiveSSM given more steps; S4D with SelectiveSSM's real spectrum",
            Reference("issue 16 §3", "DeltaNet (no decay, no gate) solves L = 512 in 40 steps"),
        ),
        Suite(
            "mqar",
            "Multi-query associative recall (Zoology)",
            mqar.__doc__,
            mqar,
            x="d_model",
            solved_at=0.99,
            references=(
                Reference(_ZOOLOGY, "attention solves every (L, pairs) cell at every width"),
                Reference(_ZOOLOGY, "gated convolutions need a width growing with L"),
                Reference(_ZOOLOGY, "input-dependent recurrences (Mamba, Based) beat time-invariant ones (S4-like)"),
            ),
        ),
        Suite(
            "selective_copying",
            "Selective copying (Mamba §4.1.1)",
            selective_copying.__doc__,
            selective_copying,
            x="seq_len",
            solved_at=0.99,
            references=_COPYING_REFERENCES,
        ),
        Suite(
            "state_tracking_long",
            "Parity given 7.5x the steps: SelectiveSSM and Mamba2 with negative eigenvalues",
            state_tracking_long.__doc__,
            state_tracking_long,
            x="label",
            references=(
                Reference(
                    "Grazzi et al. 2025, Table 2",
                    "Mamba with eigenvalues in [-1, 1] learns parity and generalises to longer sequences",
                ),
            ),
        ),
        Suite(
            "selective_copying_long",
            "Selective copying given 10x the steps: S6 against S4 (Mamba §4.1.1)",
            selective_copying_long.__doc__,
            selective_copying_long,
            x="seq_len",
            solved_at=0.99,
            references=_COPYING_REFERENCES,
        ),
        Suite(
            "induction",
            "Induction heads, trained at one length, tested at 64 … 4096 (Mamba §4.1.2)",
            induction.__doc__,
            induction,
            x="eval_len",
            references=(
                Reference(
                    f"{_MAMBA}, Table 2",
                    "Mamba keeps 100 % from 2^6 up to 2^20 (trained at 2^8)",
                    label="mamba2",
                    value=1.0,
                ),
                Reference(
                    f"{_MAMBA}, Table 2",
                    "attention and the other SSMs (S4, H3, Hyena) fail beyond ~2x the training length",
                ),
            ),
        ),
        Suite(
            "retrieval_capacity",
            "Associative-retrieval capacity (Schlag et al. 2021 §6.1)",
            retrieval_capacity.__doc__,
            retrieval_capacity,
            x="n_keys",
            references=(
                Reference(_SCHLAG, "setting 1: capacity grows with the feature size (DPFP ν = 1, 2 beyond elu+1)"),
                Reference(_SCHLAG, "setting 2 (repeated keys, latest value counts): only the delta rule succeeds"),
            ),
        ),
        Suite(
            "state_tracking",
            "Parity and modular arithmetic, trained on lengths 3–40, tested on 40–256",
            state_tracking.__doc__,
            state_tracking,
            x="label",
            references=(
                Reference(_GRAZZI, "parity with length generalisation only with negative eigenvalues"),
                Reference(
                    _GRAZZI,
                    "modular arithmetic without brackets: negative eigenvalues improve the length generalisation",
                ),
            ),
        ),
    )
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    return SUITES[name]
