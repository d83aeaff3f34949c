"""``Attention``: causal multi-head softmax attention, the baseline the recurrent mixers are measured against.

Not a recurrence: every output reads every earlier token, at O(L²) time and memory (the ``(B, H, L, L)`` scores are
materialised). It is in ``layers.BASELINES``, not ``layers.MIXERS``; ``SequenceBlock`` / ``SequenceModel`` and the
experiment configs take its name ``"attention"`` like a mixer's. Zoology (Arora et al. 2023) uses it as the
reference that solves multi-query associative recall at every length and width.

Positions: rotary embeddings (RoPE, Su et al. 2021) on q and k, the rotate-half form: channel pairs
``(i, i + K/2)`` turn by ``t · base^(−2i/K)``. With packed rows (``segment_ids``) the position restarts at 0
with every sequence and a token attends only to earlier tokens of its own sequence, so a packed row equals each
sequence run alone.

``step`` keeps a key/value cache of ``max_len`` tokens: the state is ``{"k", "v": (B, H, max_len, K) float32,
"t": (B,) int32}``; a step past ``max_len`` tokens returns NaN (the cache is full).

Shape legend: B batch · L length · D channels · H heads · K head size.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from algornn.layers._options import (
    check_batch_size,
    check_bool,
    check_discrete_dt_scale,
    check_dtypes,
    check_float,
    check_int,
    check_segment_ids,
    check_sequence,
    check_state,
    check_token,
    mask_padding,
    record_options,
    zeros_of,
)
from algornn.scan_kernels._common.packing import position_in_segment, sequence_index

_DISCRETE = "Attention is discrete-time (softmax attention over tokens)"
_MASKED = -1e30  # score of a masked pair: exp underflows to exactly 0 in float32


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
    """The validated options of an :class:`Attention` layer (``layer.options``)."""

    num_heads: int = 4
    head_dim: int | None = None  # None: D // num_heads
    rope: bool = True
    rope_base: float = 10000.0
    max_len: int = 4096

    def __post_init__(self):
        check_int("num_heads", self.num_heads)
        if self.head_dim is not None:
            check_int("head_dim", self.head_dim)
        check_bool("rope", self.rope)
        check_float("rope_base", self.rope_base, low=1.0)
        check_int("max_len", self.max_len)


def rope_angles(positions, head_dim: int, base: float):
    """``positions (...)`` int -> ``(cos, sin) (..., K/2)`` float32: the angles ``t · base^(−2i/K)``."""
    inv = base ** (-np.arange(0, head_dim // 2, dtype=np.float64) * 2.0 / head_dim)
    angle = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv, jnp.float32)
    return jnp.cos(angle), jnp.sin(angle)


def apply_rope(x, cos, sin):
    """``x (..., K)`` turned pairwise: ``(a, b) -> (a cos − b sin, a sin + b cos)`` for ``a = x[:K/2]``,
    ``b = x[K/2:]``; ``cos, sin`` broadcast against ``(..., K/2)``."""
    a, b = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def causal_attention(q, k, v, *, segment_ids=None):
    """Causal softmax attention: ``q, k, v (B, L, H, K) -> (B, L, H, K)`` float32.

    ``softmax_s(q_t · k_s / √K)`` over ``s ≤ t``; with ``segment_ids (B, L)`` only over the earlier tokens of
    t's own sequence (padding rows come out 0)."""
    L, K = q.shape[1], q.shape[-1]
    scores = jnp.einsum("blhk,bshk->bhls", q.astype(jnp.float32), k.astype(jnp.float32)) / np.sqrt(K)
    allowed = jnp.tril(jnp.ones((L, L), bool))[None, None]  # (1, 1, L, L): query t, key s
    if segment_ids is not None:
        seq = sequence_index(segment_ids)  # (B, L): which sequence of the row each token is in, −1 on padding
        same = (seq[:, :, None] == seq[:, None, :]) & (seq[:, :, None] >= 0)  # a padding query reads nothing
        allowed = allowed & same[:, None]
    weights = jax.nn.softmax(jnp.where(allowed, scores, _MASKED), axis=-1)
    weights = jnp.where(allowed, weights, 0.0)  # a padding query (nothing allowed) reads nothing
    return jnp.einsum("bhls,bshk->blhk", weights, v.astype(jnp.float32))


class Attention(nnx.Module):
    """Causal multi-head softmax attention with rotary positions (a baseline; ``layers.BASELINES``).

    Args:
        d_model: channels D.
        num_heads: number of heads H.
        head_dim: query/key/value size K per head (None: D // num_heads; even when ``rope``).
        rope: rotary position embeddings on q and k (False: no position information at all).
        rope_base: the base of the rotary frequencies ``base^(−2i/K)``.
        max_len: tokens the key/value cache of ``step`` holds (``__call__`` takes any length).
        dtype: compute dtype of the projections, inputs and outputs; scores and softmax run in float32.
        param_dtype: dtype the parameters are stored in.
        rngs: ``nnx.Rngs`` for the initialisation.

    ``__call__`` and ``step`` accept ``dt_scale`` only as 1 (the default).
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 4,
        head_dim: int | None = None,
        rope: bool = True,
        rope_base: float = 10000.0,
        max_len: int = 4096,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        opt = record_options(AttentionOptions, locals())
        self.dtype, self.param_dtype = check_dtypes("Attention", dtype, param_dtype)
        H = opt.num_heads
        if opt.head_dim is None and d_model % H:
            raise ValueError(f"Attention: d_model={d_model} is not divisible by num_heads={H}; give head_dim")
        K = opt.head_dim or d_model // H
        if opt.rope and K % 2:
            raise ValueError(f"Attention: head_dim={K} must be even for rope=True (channels turn in pairs)")
        self.options, self.d_model, self.heads, self.head_dim = opt, d_model, H, K
        lin = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
        self.qkv_proj = nnx.Linear(d_model, 3 * H * K, **lin)
        self.o_proj = nnx.Linear(H * K, d_model, **lin)

    def _qkv(self, x, positions):
        """``x (..., D)``, ``positions (...)`` -> ``q, k, v (..., H, K)`` with q and k turned by RoPE."""
        q, k, v = jnp.split(self.qkv_proj(x), 3, axis=-1)
        shape = x.shape[:-1] + (self.heads, self.head_dim)
        q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)
        if self.options.rope:
            cos, sin = rope_angles(positions, self.head_dim, self.options.rope_base)
            cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over heads
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def _output(self, o):
        o = o.astype(self.dtype)
        return self.o_proj(o.reshape(o.shape[:-2] + (self.heads * self.head_dim,))).astype(self.dtype)

    def __call__(self, x, *, dt_scale=1.0, segment_ids=None):
        """``x (B, L, D) -> (B, L, D)`` in ``dtype``. ``segment_ids (B, L)``: packed sequences (0 = padding; a new
        id starts a new sequence, whose positions restart at 0); padding outputs 0."""
        check_sequence("Attention", x, self.d_model)
        check_discrete_dt_scale("Attention", dt_scale, _DISCRETE)
        if segment_ids is not None:
            segment_ids = check_segment_ids("Attention", segment_ids, x.shape[:2])
        x = x.astype(self.dtype)
        if segment_ids is None:
            positions = jnp.arange(x.shape[1], dtype=jnp.int32)[None, :]  # (1, L)
        else:
            positions = position_in_segment(segment_ids)  # (B, L): 0 at every sequence start
        q, k, v = self._qkv(x, positions)
        return mask_padding(self._output(causal_attention(q, k, v, segment_ids=segment_ids)), segment_ids)

    def state_spec(self, batch_size: int):
        """``{"k", "v": (B, H, max_len, K) float32, "t": (B,) int32}``: the cache and the tokens seen."""
        cache = jax.ShapeDtypeStruct((batch_size, self.heads, self.options.max_len, self.head_dim), jnp.float32)
        return {"k": cache, "v": cache, "t": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

    def init_state(self, batch_size: int):
        """An empty cache at position 0."""
        check_batch_size("Attention", batch_size)
        return zeros_of(self.state_spec(batch_size))

    def step(self, state, x_t, *, dt_scale=1.0):
        """One token: ``x_t (B, D) -> (state, y_t (B, D))``; NaN once the cache's ``max_len`` tokens are used."""
        check_token("Attention", x_t, self.d_model)
        check_discrete_dt_scale("Attention", dt_scale, _DISCRETE)
        check_state("Attention", state, self.state_spec(x_t.shape[0]))
        t = state["t"]  # (B,)
        q, k, v = self._qkv(x_t.astype(self.dtype), t)  # (B, H, K)
        slot = jnp.arange(self.options.max_len)[None, :] == t[:, None]  # (B, T): where this token goes
        k_cache = jnp.where(slot[:, None, :, None], k.astype(jnp.float32)[:, :, None, :], state["k"])
        v_cache = jnp.where(slot[:, None, :, None], v.astype(jnp.float32)[:, :, None, :], state["v"])
        seen = (jnp.arange(self.options.max_len)[None, :] <= t[:, None])[:, None, :]  # (B, 1, T)
        scores = jnp.einsum("bhk,bhsk->bhs", q.astype(jnp.float32), k_cache) / np.sqrt(self.head_dim)
        weights = jax.nn.softmax(jnp.where(seen, scores, _MASKED), axis=-1)
        o = jnp.einsum("bhs,bhsk->bhk", jnp.where(seen, weights, 0.0), v_cache)
        o = jnp.where((t < self.options.max_len)[:, None, None], o, jnp.nan)  # a full cache: NaN, never a wrong y
        return {"k": k_cache, "v": v_cache, "t": t + 1}, self._output(o)
