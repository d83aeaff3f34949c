"""``SequenceBlock``: norm → mixer → GELU → dropout → GLU/MLP → dropout → residual (pre- or post-norm).

The wiring of the S4/S5 residual blocks (docs/layers.md §SequenceBlock):

    prenorm:   y = x + FF(mixer(norm(x)))
    postnorm:  y = norm(x + FF(mixer(x)))
    FF(z) = drop(GLU(drop(gelu(z))))           ff="glu":  GLU(z) = (z W_a) ⊙ σ(z W_b)
          = drop(W_2 gelu(W_1 drop(gelu(z))))  ff="mlp"   (hidden width 2D)
          = drop(z)                            ff="none"

Shapes: x ``(B, L, D)``; ``step`` takes ``x_t (B, D)``. ``mask (B, L)`` (optional) zeroes padded positions of the
block input, so that bidirectional mixers and the pooled output never see padding.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from algornn.layers._options import check_bool, check_choice, check_float
from algornn.layers._registry import resolve_mixer

NORMS = ("layer", "batch")
FFS = ("glu", "mlp", "none")


def make_norm(norm: str, d_model: int, rngs: nnx.Rngs):
    if norm == "layer":
        return nnx.LayerNorm(d_model, rngs=rngs)
    return nnx.BatchNorm(d_model, momentum=0.9, rngs=rngs)


class SequenceBlock(nnx.Module):
    """A residual block around one sequence mixer (a name in ``layers.MIXERS`` or a mixer class)."""

    def __init__(self, d_model: int, mixer, *, mixer_options=None, norm: str = "layer", prenorm: bool = True,
                 dropout: float = 0.0, ff: str = "glu", rngs: nnx.Rngs):
        check_choice("norm", norm, NORMS)
        check_choice("ff", ff, FFS)
        check_bool("prenorm", prenorm)
        check_float("dropout", dropout, low=0.0, high=1.0, low_open=False)
        if dropout >= 1.0:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        if mixer_options is not None and not isinstance(mixer_options, dict):
            raise ValueError(f"mixer_options must be a dict or None; got {type(mixer_options).__name__}")
        mixer_cls = resolve_mixer(mixer)
        self.d_model = d_model
        self.prenorm = prenorm
        self.ff = ff
        self.mixer = mixer_cls(d_model, rngs=rngs, **(mixer_options or {}))
        self.norm = make_norm(norm, d_model, rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        if ff == "glu":
            self.ff_in = nnx.Linear(d_model, 2 * d_model, rngs=rngs)
        elif ff == "mlp":
            self.ff_in = nnx.Linear(d_model, 2 * d_model, rngs=rngs)
            self.ff_out = nnx.Linear(2 * d_model, d_model, rngs=rngs)

    def _feed_forward(self, z):
        if self.ff == "none":
            return self.dropout(z)
        z = self.dropout(jax.nn.gelu(z))
        if self.ff == "glu":
            a, b = jnp.split(self.ff_in(z), 2, axis=-1)
            z = a * jax.nn.sigmoid(b)
        else:
            z = self.ff_out(jax.nn.gelu(self.ff_in(z)))
        return self.dropout(z)

    def __call__(self, x, mask=None):
        """``x (B, L, D) -> (B, L, D)``; ``mask (B, L)`` of 0/1 (or bool) zeroes padded inputs."""
        if mask is not None:
            x = x * mask[..., None].astype(x.dtype)
        z = self.norm(x) if self.prenorm else x
        y = x + self._feed_forward(self.mixer(z))
        return y if self.prenorm else self.norm(y)

    def init_state(self, batch_size: int):
        return self.mixer.init_state(batch_size)

    def step(self, state, x_t):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``."""
        z = self.norm(x_t) if self.prenorm else x_t
        state, z = self.mixer.step(state, z)
        y = x_t + self._feed_forward(z)
        return state, (y if self.prenorm else self.norm(y))
