"""``SequenceBlock``: norm → mixer → GELU → dropout → GLU/MLP → dropout → residual (pre- or post-norm).

The wiring of the S4/S5 residual blocks (docs/layers.md §SequenceBlock):

    prenorm:   y = x + FF(mixer(norm(x)))
    postnorm:  y = norm(x + FF(mixer(x)))
    FF(z) = drop(GLU(drop(gelu(z))))           ff="glu":  GLU(z) = (z W_a) ⊙ σ(z W_b)
          = drop(W_2 gelu(W_1 drop(gelu(z))))  ff="mlp"   (hidden width 2D)
          = drop(z)                            ff="none"

Shapes: x ``(B, L, D)``; ``step`` takes ``x_t (B, D)``. ``mask (B, L)`` (optional) zeroes padded positions of the
block input, so that bidirectional mixers and the pooled output never see padding. ``dt (B, L)`` (optional;
``dt_t (B,)`` in ``step``): per-step elapsed times for irregularly sampled input, passed to a continuous-time mixer
(a discrete-time mixer raises ``ValueError``). ``segment_ids (B, L)`` (optional, int, 0 = padding): packed
sequences, passed to a mixer whose ``__call__`` takes them (any other mixer raises ``ValueError``); padding positions
are masked like ``mask``'s. ``dtype`` (compute) and
``param_dtype`` (parameters) go to the norm, the feed-forward layers and the mixer; outputs are in ``dtype``.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from algornn.layers._options import (
    check_bool,
    check_choice,
    check_dtypes,
    check_float,
    check_mixer_options,
    takes_dt,
    takes_keyword,
    takes_segment_ids,
)
from algornn.layers._registry import resolve_mixer

NORMS = ("layer", "batch")
FFS = ("glu", "mlp", "none")


def make_norm(norm: str, d_model: int, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    if norm == "layer":
        return nnx.LayerNorm(d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    return nnx.BatchNorm(d_model, momentum=0.9, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def build_mixer(mixer, d_model: int, mixer_options, dtype, param_dtype, rngs: nnx.Rngs):
    """Instantiate ``mixer`` (a name in ``MIXERS`` or a class) with a validated ``mixer_options`` dict."""
    if mixer_options is not None and not isinstance(mixer_options, dict):
        raise ValueError(f"mixer_options must be a dict or None; got {type(mixer_options).__name__}")
    mixer_cls = resolve_mixer(mixer)
    options = dict(mixer_options or {})
    check_mixer_options(mixer_cls, options)
    for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if takes_keyword(mixer_cls, name):
            options[name] = value
        elif value != jnp.float32:
            raise ValueError(
                f"{name}={jnp.dtype(value).name}: the mixer class {mixer_cls.__name__} does not take "
                f"{name}, so it cannot run in it"
            )
    return mixer_cls(d_model, rngs=rngs, **options)


def _floating(owner: str, name: str, x):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{owner}: {name} must be a floating array; got dtype {x.dtype}, shape {x.shape}")
    return x


class SequenceBlock(nnx.Module):
    """A residual block around one sequence mixer, ``(B, L, D) -> (B, L, D)``.

    Args:
        d_model: channels D.
        mixer: a name in ``algornn.layers.MIXERS`` or a mixer class.
        mixer_options: keyword options of the mixer (see its class docstring); unknown names raise ``ValueError``.
        norm: "layer" (LayerNorm) or "batch" (BatchNorm).
        prenorm: normalise the block input (True) or the residual sum (False).
        dropout: dropout rate in [0, 1).
        ff: feed-forward after the mixer: "glu", "mlp" or "none".
        dtype: compute dtype (inputs are cast to it, outputs come back in it); scans accumulate in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation and dropout.
    """

    def __init__(
        self,
        d_model: int,
        mixer,
        *,
        mixer_options=None,
        norm: str = "layer",
        prenorm: bool = True,
        dropout: float = 0.0,
        ff: str = "glu",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_choice("norm", norm, NORMS)
        check_choice("ff", ff, FFS)
        check_bool("prenorm", prenorm)
        check_float("dropout", dropout, low=0.0, high=1.0, low_open=False)
        if dropout >= 1.0:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        self.dtype, self.param_dtype = check_dtypes("SequenceBlock", dtype, param_dtype)
        self.d_model = d_model
        self.prenorm = prenorm
        self.ff = ff
        self.mixer = build_mixer(mixer, d_model, mixer_options, self.dtype, self.param_dtype, rngs)
        self.norm = make_norm(norm, d_model, rngs, self.dtype, self.param_dtype)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        lin = dict(dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
        if ff == "glu":
            self.ff_in = nnx.Linear(d_model, 2 * d_model, **lin)
        elif ff == "mlp":
            self.ff_in = nnx.Linear(d_model, 2 * d_model, **lin)
            self.ff_out = nnx.Linear(2 * d_model, d_model, **lin)

    def _feed_forward(self, z):
        z = z.astype(self.dtype)
        if self.ff == "none":
            return self.dropout(z)
        z = self.dropout(jax.nn.gelu(z))
        if self.ff == "glu":
            a, b = jnp.split(self.ff_in(z), 2, axis=-1)
            z = a * jax.nn.sigmoid(b)
        else:
            z = self.ff_out(jax.nn.gelu(self.ff_in(z)))
        return self.dropout(z)

    def _mix(self, z, dt, *, step_state=None, segment_ids=None):
        """The mixer on ``z``, with the elapsed times when given (a discrete-time mixer refuses them) and the
        segment ids of packed sequences when given (a mixer whose ``__call__`` does not take them refuses them)."""
        if dt is not None and not takes_dt(self.mixer):
            raise ValueError(
                f"SequenceBlock: the mixer {type(self.mixer).__name__} is discrete-time (no step size Δ), so it "
                f"cannot take per-step elapsed times dt; the continuous-time mixers S4, S4D, S5, LMU, HiPPORNN, "
                f"LSSL and SelectiveSSM do"
            )
        if step_state is not None:
            return self.mixer.step(step_state, z) if dt is None else self.mixer.step(step_state, z, dt_t=dt)
        kwargs = {} if dt is None else {"dt": dt}
        if segment_ids is not None:
            if not takes_segment_ids(self.mixer):
                raise ValueError(
                    f"SequenceBlock: the mixer {type(self.mixer).__name__} does not take segment_ids, so it cannot "
                    f"run packed sequences (several sequences per row); give one sequence per row (segment_ids=None)"
                )
            kwargs["segment_ids"] = segment_ids
        return self.mixer(z, **kwargs)

    def __call__(self, x, mask=None, dt=None, *, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``; ``mask (B, L)`` of 0/1 (or bool) zeroes padded inputs;
        ``dt (B, L)``: elapsed time before each sample (irregular sampling; continuous-time mixers only);
        ``segment_ids (B, L)``: packed sequences (0 = padding, zeroed like ``mask``), passed to the mixer."""
        x = _floating("SequenceBlock", "x", x).astype(self.dtype)
        if mask is not None:
            x = x * mask[..., None].astype(self.dtype)
        if segment_ids is not None:
            x = x * (segment_ids != 0)[..., None].astype(self.dtype)
        z = self.norm(x) if self.prenorm else x
        y = x + self._feed_forward(self._mix(z, dt, segment_ids=segment_ids))
        return (y if self.prenorm else self.norm(y)).astype(self.dtype)

    def init_state(self, batch_size: int):
        return self.mixer.init_state(batch_size)

    def step(self, state, x_t, dt_t=None):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``; ``dt_t (B,)``: elapsed time before it."""
        x_t = _floating("SequenceBlock.step", "x_t", x_t).astype(self.dtype)
        z = self.norm(x_t) if self.prenorm else x_t
        state, z = self._mix(z, dt_t, step_state=state)
        y = x_t + self._feed_forward(z)
        return state, (y if self.prenorm else self.norm(y)).astype(self.dtype)
