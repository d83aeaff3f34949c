"""Short causal depthwise convolution, the front end of Mamba, Mamba-2, Hawk and the flash-linear-attention mixers.

``y_t = Σ_{j<W} w_j ⊙ u_{t−W+1+j} + b`` per channel (zero history before t = 0), optionally followed by SiLU.
As a recurrent module its state is the last ``W − 1`` inputs, ``buf (B, W−1, E)`` float32.

- ``causal_conv(u, w, b, *, segment_ids=None)``: the pure function, ``u (B, L, E)``, ``w (W, E)``, ``b (E,)`` ->
  ``(B, L, E)``.
- ``ShortConv(channels, width, *, activation="silu"|None, ...)``: parameters ``conv_w (W, E)``, ``conv_b (E,)``;
  ``__call__(u (B, L, E), *, segment_ids=None)``, ``state_spec(B)``, ``step(buf, u_t (B, E)) -> (buf, y_t)``.

Packed sequences (``segment_ids (B, L)`` int, 0 = padding; docs/layers.md §Packed sequences): a tap never reaches
back past the first position of its own sequence (each sequence sees zero history, as if alone), and padding
positions output exactly 0 (bias and activation included).

Shape legend: B batch · L length · E channels · W kernel width.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from algornn.layers._options import check_choice, check_int
from algornn.layers._params import param
from algornn.scan_kernels._common.packing import check_segment_ids_shape, position_in_segment

ACTIVATIONS = ("silu", None)


def causal_conv(u, w, b, *, segment_ids=None):
    """Depthwise causal convolution: ``u (B, L, E)``, ``w (W, E)``, ``b (E,)``: ``y_t = Σ_j w_j u_{t-W+1+j} + b``.

    ``segment_ids (B, L)`` (packed sequences): the tap ``u_{t-k}`` counts only if ``t − k`` lies in t's sequence,
    and padding positions give 0."""
    width, length = w.shape[0], u.shape[1]
    padded = jnp.pad(u, ((0, 0), (width - 1, 0), (0, 0)))
    if segment_ids is None:
        y = sum(padded[:, j : j + length] * w[j][None, None] for j in range(width))
        return y + b[None, None]
    seg = check_segment_ids_shape(segment_ids, u.shape[:2], "the batch and length of u")
    pos = position_in_segment(seg)[..., None]  # (B, L, 1): how far back t's sequence reaches
    zero = jnp.zeros((), u.dtype)
    y = sum(jnp.where(pos >= width - 1 - j, padded[:, j : j + length], zero) * w[j][None, None] for j in range(width))
    return jnp.where((seg == 0)[..., None], zero, y + b[None, None])


def init_conv_weight(key, width: int, channels: int):
    """``U(−1, 1) / √W`` per tap (PyTorch's Conv1d default for a depthwise kernel of width W), ``(W, E)`` float32."""
    return jax.random.uniform(key, (width, channels), jnp.float32, -1.0, 1.0) / math.sqrt(width)


class ShortConv(nnx.Module):
    """Causal depthwise convolution of width ``W`` on ``E`` channels, with its own recurrent state for ``step``.

    Args:
        channels: channels E.
        width: kernel width W (>= 1; W = 1 is a per-channel scale and bias, with an empty state).
        activation: "silu" (applied after the convolution) or None.
        dtype: compute dtype; param_dtype: storage dtype of ``conv_w (W, E)`` and ``conv_b (E,)``.
        rngs: ``nnx.Rngs`` for the initialisation.
    """

    def __init__(
        self,
        channels: int,
        width: int,
        *,
        activation="silu",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("channels", channels)
        check_int("width", width)
        check_choice("activation", activation, ACTIVATIONS)
        self.channels, self.width, self.activation, self.dtype = channels, width, activation, dtype
        self.conv_w = param(init_conv_weight(rngs.params(), width, channels), param_dtype)
        self.conv_b = param(jnp.zeros((channels,), jnp.float32), param_dtype)

    def _act(self, y):
        return jax.nn.silu(y) if self.activation == "silu" else y

    def __call__(self, u, *, segment_ids=None):
        """``u (B, L, E) -> (B, L, E)`` in ``dtype``; ``segment_ids (B, L)``: packed sequences (no tap crosses into
        the previous sequence; padding outputs 0)."""
        w, b = self.conv_w[...].astype(self.dtype), self.conv_b[...].astype(self.dtype)
        return self._act(causal_conv(u.astype(self.dtype), w, b, segment_ids=segment_ids))  # silu(0) = 0

    def state_spec(self, batch_size: int):
        """``buf (B, W − 1, E)`` float32: the last W − 1 inputs."""
        return jax.ShapeDtypeStruct((batch_size, self.width - 1, self.channels), jnp.float32)

    def step(self, buf, u_t):
        """One token: ``buf (B, W−1, E)``, ``u_t (B, E) -> (buf, y_t (B, E))``."""
        window = jnp.concatenate([buf.astype(self.dtype), u_t.astype(self.dtype)[:, None]], axis=1)  # (B, W, E)
        w, b = self.conv_w[...].astype(self.dtype), self.conv_b[...].astype(self.dtype)
        y = self._act(jnp.sum(window * w[None], axis=1) + b[None])
        return window[:, 1:].astype(jnp.float32), y
