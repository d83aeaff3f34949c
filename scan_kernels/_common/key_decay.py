"""Per-key decayed scores of a chunk, by secondary chunking (no (C, C, K) tensor, no overflow).

Shape legend: ... leading batch dims · C chunk · K key dim · c sub-chunk · nb = ceil(C / c) sub-chunks ·
Cp = nb·c · m score rows sharing the columns.

With per-key cumulative log-gates ``γ (..., C, K)`` inside a chunk (non-increasing: g ≤ 0), the chunked forms of
linear attention with per-key gates and of the delta rule with per-key decay need the scores

    S_ri = Σ_d x_rd k_id exp(γ_rd − γ_id)          for r ≥ i (``strict``: r > i), else 0.

``exp(γ_r − γ_i)`` must not be split as ``exp(γ_r) · exp(−γ_i)``: ``exp(−γ)`` overflows (−20 per step over 64
steps is e^1280). The exact ``(C, C, K)`` tensor of pairwise decays is safe but costs C²·K exponentials and that
much memory. Secondary chunking (GLA, Yang et al. 2024, §4, two-level chunking) splits the chunk into
sub-chunks of c; for r in sub-chunk a and i in an *earlier* sub-chunk b, with ρ_a the first position of a and
ε_b the last of b (i ≤ ε_b < ρ_a ≤ r),

    exp(γ_r − γ_i) = exp(γ_r − γ_ρa) · exp(γ_ρa − γ_εb) · exp(γ_εb − γ_i),        every exponent ≤ 0

so those blocks are plain matmuls of ``X̃ = x ⊙ exp(γ − γ_ρ)`` against ``K̃_a = k ⊙ ek_a``,
``ek_a,i = exp(γ_ρa − γ_εb) · exp(γ_εb − γ_i)`` masked to ``i < ρ_a``; only the c×c diagonal blocks use exact
decays ``(nb, c, c, K)``. Exponentials: C·K·(2 + c) + nb²·K instead of C²·K. Every exponent is ≤ 0 and every
factor is at least the decay it is part of: an exponential can underflow to 0 only where the exact decay is below
float32 range anyway, never overflow.

Gradients of ``<dS, S>`` (factored the same way; ``decayed_scores_vjp``):

    dx_r = Σ_i dS_ri (k_i ⊙ e^{γ_r − γ_i}),   dk_i = Σ_r dS_ri (x_r ⊙ e^{γ_r − γ_i}),   dγ = x ⊙ dx − k ⊙ dk

(each score is ∝ exp(γ_r − γ_i): +1 on its row's γ, −1 on its column's). ``key_decayed_scores`` wraps both in a
``custom_vjp`` for callers that differentiate with ``jax.vjp``, as linear attention's per-key gates do.

Factored diagonal blocks (``factored=True``). Where every sub-chunk's gates stay within ``FACTOR_LIMIT`` of their
first value (``key_factorable``: |γ_r − γ_ρ| ≤ 40 for r in the sub-chunk, i.e. decays above about −2.5 per step
with c = 16), the diagonal blocks factor too: ``exp(γ_r − γ_i) = exp(γ_r − γ_ρa) · exp(γ_ρa − γ_i)`` with the
second factor ≤ e^40. ``ek`` then carries ``exp(γ_ρa − γ_i)`` on block a itself, the whole score matrix is the
one matmul ``X̃ K̃_aᵀ`` masked to r ≥ i, and the ``(nb, c, c, K)`` exact decays are never formed (they were most
of the per-key delta rule's time). Callers check the bound at run time (``lax.cond``) and take the exact form
otherwise, so results are exact-in-range either way.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from algornn.scan_kernels._common.chunk_utils import FACTOR_LIMIT

# Sub-chunk length c: exact decays cost C·c·K exponentials and the decayed keys nb·C·K products; on the 2-core CPU
# the per-key delta rule at C = 64 ran fastest with 16 (8 and 32 slower).
SUB_CHUNK = 16

_mm = partial(jnp.einsum, precision=lax.Precision.HIGHEST)


class KeyDecay(NamedTuple):
    """The factors of ``exp(γ_r − γ_i)`` of one chunk's per-key gates, shared by every score on them."""

    C: int  # chunk length (before padding to Cp)
    fx: jax.Array  # exp(γ_r − γ_ρ(r)), (..., nb, c, K)
    ek: jax.Array  # exp(γ_ρa − γ_εb) · exp(γ_εb − γ_i) (i in sub-chunk b < a), else 0, (..., nb, Cp, K)
    dd: jax.Array | None  # exp(γ_r − γ_i) where r ≥ i inside each sub-chunk, else 0, (..., nb, c, c, K); None
    # when factored (``ek`` then also holds exp(γ_ρa − γ_i) for i in sub-chunk a itself)


def _sub_chunks(gam, sub: int):
    """``gam (..., C, K)`` as ``(..., nb, c, K)`` sub-chunks of ``c = min(sub, C)``, C padded to ``nb·c`` by
    repeating the last γ (padded positions carry zero x and k)."""
    C, K = gam.shape[-2:]
    c = min(sub, C)
    nb = -(-C // c)
    if nb * c != C:
        gam = jnp.pad(gam, [(0, 0)] * (gam.ndim - 2) + [(0, nb * c - C), (0, 0)], mode="edge")
    return gam.reshape(gam.shape[:-2] + (nb, c, K))


def key_factorable(gam, sub: int = SUB_CHUNK):
    """Whether the diagonal blocks of ``gam (..., C, K)`` may be factored (``key_decay(..., factored=True)``): every
    ``|γ_r − γ_ρ| ≤ FACTOR_LIMIT`` (ρ the first position of r's sub-chunk); one boolean, False on inf / NaN."""
    g4 = _sub_chunks(gam, sub)
    return jnp.max(jnp.abs(g4 - g4[..., :1, :])) <= FACTOR_LIMIT


def key_decay(gam, sub: int = SUB_CHUNK, factored: bool = False) -> KeyDecay:
    """Factors of the pairwise decays of cumulative per-key log-gates ``gam (..., C, K)``; C is padded to a multiple
    of ``c = min(sub, C)`` by repeating the last γ (padded positions carry zero x and k). ``factored``: the diagonal
    blocks factored as well (only where ``key_factorable``), no ``dd``."""
    C = gam.shape[-2]
    g4 = _sub_chunks(gam, sub)
    lead, (nb, c, K) = g4.shape[:-3], g4.shape[-3:]
    Cp = nb * c
    first, last = g4[..., :1, :], g4[..., -1:, :]  # γ_ρa, γ_εb (..., nb, 1, K)
    fx = jnp.exp(g4 - first)
    fk = jnp.exp(last - g4)  # exp(γ_εb − γ_i), (..., nb, c, K)
    before = _lift(jnp.arange(nb)[:, None] > jnp.arange(nb)[None, :], len(lead), 1)  # b < a, (nb, nb, 1)
    span = first - jnp.swapaxes(last, -3, -2)  # γ_ρa − γ_εb, (..., nb, nb, K)
    mid = jnp.where(before, jnp.exp(jnp.where(before, span, 0.0)), 0.0)  # masked before exp: no inf, no inf grad
    ek = mid[..., :, :, None, :] * fk[..., None, :, :, :]  # (..., nb, nb, c, K): zero on and above the diagonal
    if factored:  # block a itself: exp(γ_ρa − γ_i) ≤ e^FACTOR_LIMIT
        on = _lift(jnp.arange(nb)[:, None] == jnp.arange(nb)[None, :], len(lead), 2)  # (nb, nb, 1, 1)
        ek = jnp.where(on, jnp.exp(first - g4)[..., None, :, :, :], ek)
        return KeyDecay(C, fx, ek.reshape(lead + (nb, Cp, K)), None)
    ek = ek.reshape(lead + (nb, Cp, K))
    incl = _lift(jnp.arange(c)[:, None] >= jnp.arange(c)[None, :], len(lead) + 1, 1)  # (c, c, 1)
    dg = g4[..., :, None, :] - g4[..., None, :, :]  # γ_r − γ_i, (..., nb, c, c, K)
    dd = jnp.where(incl, jnp.exp(jnp.where(incl, dg, 0.0)), 0.0)
    return KeyDecay(C, fx, ek, dd)


def _lift(mask, n_lead: int, n_trail: int = 0):
    """``mask`` with ``n_lead`` leading and ``n_trail`` trailing unit axes (explicit ranks, no rank promotion)."""
    return mask.reshape((1,) * n_lead + mask.shape + (1,) * n_trail)


def _blocks(x, dec: KeyDecay):
    """Zero-pad ``x (..., C, K)`` to Cp rows: ``(x (..., Cp, K), x by sub-chunk (..., nb, c, K))``."""
    nb, c = dec.fx.shape[-3:-1]
    pad = nb * c - x.shape[-2]
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, pad), (0, 0)])
    return x, x.reshape(x.shape[:-2] + (nb, c, x.shape[-1]))


def _mask(C: int, strict: bool):
    i = jnp.arange(C)[:, None]
    j = jnp.arange(C)[None, :]
    return i > j if strict else i >= j


def decayed_scores(x, k, dec: KeyDecay, strict: bool = False):
    """``S_ri = Σ_d x_rd k_id exp(γ_rd − γ_id)`` on r ≥ i (r > i if ``strict``), else 0: ``x, k (..., C, K)`` ->
    ``(..., C, C)``."""
    C = dec.C
    nb, c = dec.fx.shape[-3:-1]
    kp, k4 = _blocks(k, dec)
    _, x4 = _blocks(x, dec)
    off = _mm("...ark,...aik->...ari", x4 * dec.fx, kp[..., None, :, :] * dec.ek)  # earlier sub-chunks, (.., nb, c, Cp)
    if dec.dd is None:  # factored: the diagonal blocks are in ``off`` too (above their diagonal: masked here)
        S = off.reshape(off.shape[:-3] + (nb * c, nb * c))[..., :C, :C]
        return jnp.where(_lift(_mask(C, strict), S.ndim - 2), S, 0.0)
    diag = _mm("...ark,...arik,...aik->...ari", x4, dec.dd, k4)  # exact inside each sub-chunk, (..., nb, c, c)
    lead = off.shape[:-3]
    eye = _lift((jnp.arange(nb)[:, None] == jnp.arange(nb)[None, :])[:, None, :, None], len(lead))  # (nb, 1, nb, 1)
    S = off.reshape(lead + (nb, c, nb, c)) + jnp.where(eye, diag[..., :, :, None, :], 0.0)  # block a at columns a
    S = S.reshape(lead + (nb * c, nb * c))[..., :C, :C]
    return jnp.where(_lift(_mask(C, True), len(lead)), S, 0.0) if strict else S


def decayed_scores_vjp(dS, x, k, dec: KeyDecay, strict: bool = False):
    """Cotangents of ``decayed_scores`` for ``dS (..., C, C)`` (entries outside the mask are ignored):
    ``(dx, dk (..., C, K), dγ (..., C, K))``."""
    C = dec.C
    nb, c = dec.fx.shape[-3:-1]
    Cp = nb * c
    dS = jnp.where(_lift(_mask(C, strict), dS.ndim - 2), dS, 0.0)
    if Cp != C:
        dS = jnp.pad(dS, [(0, 0)] * (dS.ndim - 2) + [(0, Cp - C), (0, Cp - C)])
    kp, k4 = _blocks(k, dec)
    _, x4 = _blocks(x, dec)
    d4 = dS.reshape(dS.shape[:-2] + (nb, c, Cp))  # rows by sub-chunk
    dx = dec.fx * _mm("...ari,...aik->...ark", d4, kp[..., None, :, :] * dec.ek)
    if dec.dd is not None:  # the exact diagonal blocks' cotangent ``db (..., nb, c, c)``
        db = jnp.moveaxis(jnp.diagonal(d4.reshape(dS.shape[:-2] + (nb, c, nb, c)), axis1=-4, axis2=-2), -1, -3)
        dx = dx + _mm("...ari,...arik,...aik->...ark", db, dec.dd, k4)
    y = dec.ek * _mm("...ari,...ark->...aik", d4, x4 * dec.fx)  # (..., nb, Cp, K)
    # Σ over the nb sub-chunks unrolled: a reduction over that non-minor axis ran ~25× slower on the CPU (jax 0.10.2)
    dk = sum(y[..., a, :, :] for a in range(1, nb)) + y[..., 0, :, :]  # (..., Cp, K)
    if dec.dd is not None:
        dk = dk + _mm("...ari,...arik,...ark->...aik", db, dec.dd, x4).reshape(dk.shape)
    dx = dx.reshape(dk.shape)[..., :C, :]
    dk = dk[..., :C, :]
    return dx, dk, x * dx - k * dk


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def key_decayed_scores(x, k, gam, strict: bool = False, sub: int = SUB_CHUNK):
    """``S_ri = Σ_d x_rd k_id exp(γ_rd − γ_id)`` masked to r ≥ i (r > i if ``strict``) for ``x, k, gam (..., C, K)``
    -> ``(..., C, C)``, by secondary chunking, with the diagonal blocks factored where ``key_factorable`` (run-time
    ``lax.cond``); its ``custom_vjp`` keeps the inputs and recomputes the decay factors."""
    return _scores_fwd(x, k, gam, strict, sub)[0]


def factored_or_exact(gam, fn, *args, sub: int = SUB_CHUNK):
    """``fn(*args, factored=...)`` with ``factored`` True where the per-key gates ``gam (..., C, K)`` pass
    ``key_factorable`` and False elsewhere, decided at run time by one ``lax.cond`` over the whole of ``gam``;
    ``gam`` None (per-head gates or none) calls ``fn(*args, factored=False)``. Pass ``gam`` in ``args`` too where
    ``fn`` needs it: operands of the cond, not closures, so it is computed once."""
    if gam is None:
        return fn(*args, factored=False)
    return lax.cond(key_factorable(gam, sub), partial(fn, factored=True), partial(fn, factored=False), *args)


def _scores_fwd(x, k, gam, strict, sub):
    def scores(x, k, gam, factored):
        return decayed_scores(x, k, key_decay(gam, sub, factored), strict)

    return factored_or_exact(gam, scores, x, k, gam, sub=sub), (x, k, gam)


def _scores_bwd(strict, sub, res, dS):
    x, k, gam = res

    def cotangents(dS, x, k, gam, factored):
        return decayed_scores_vjp(dS, x, k, key_decay(gam, sub, factored), strict)

    return factored_or_exact(gam, cotangents, dS, x, k, gam, sub=sub)


key_decayed_scores.defvjp(_scores_fwd, _scores_bwd)
