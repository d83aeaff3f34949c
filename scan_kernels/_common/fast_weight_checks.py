"""Input validation shared by the fast-weight recurrences (linear attention, delta rule).

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk.

Every check raises a ``ValueError`` that names the argument, its shape/dtype and what was expected,
so a bad call fails at the boundary instead of deep inside an XLA trace.
"""

import numpy as np

from algornn.scan_kernels._common.validate import check_inexact, check_int, check_ndim, check_shape, describe

_INPUT_DTYPES = ("float32", "bfloat16")


def _dtype_name(x) -> str:
    return np.dtype(x.dtype).name


def check_qkv(q, k, v, *, time_axis: bool = True):
    """Check ``q, k (B, L, H, K)``, ``v (B, L, H, V)`` (or ``(B, H, K)``/``(B, H, V)`` per step).

    Returns ``(B, L, H, K, V)`` (``L`` is None when ``time_axis=False``).
    """
    rank = 4 if time_axis else 3
    legend = "(B, L, H, K)" if time_axis else "(B, H, K)"
    vlegend = "(B, L, H, V)" if time_axis else "(B, H, V)"
    for name, x, leg in (("q", q, legend), ("k", k, legend), ("v", v, vlegend)):
        check_ndim(name, x, rank, leg)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if _dtype_name(x) not in _INPUT_DTYPES:
            raise ValueError(f"{name} must be float32 or bfloat16, got {describe(x)}")
    if not (_dtype_name(q) == _dtype_name(k) == _dtype_name(v)):
        raise ValueError(f"q, k, v must share one dtype, got {_dtype_name(q)}, {_dtype_name(k)}, {_dtype_name(v)}")
    qs, ks, vs = tuple(q.shape), tuple(k.shape), tuple(v.shape)
    if ks != qs:
        raise ValueError(f"k must have the shape of q {legend}={qs}, got {describe(k)}")
    if vs[:-1] != qs[:-1]:
        raise ValueError(f"v must have shape {vlegend} with {vlegend[:-3]}) = {qs[:-1]} as in q, got {describe(v)}")
    if time_axis:
        B, L, H, K = qs
        return B, L, H, K, vs[-1]
    B, H, K = qs
    return B, None, H, K, vs[-1]


def check_log_decay(log_decay, B, L, H, K, *, per_key_ok: bool = True):
    """``None``, ``(B, L, H)`` (scalar per head) or ``(B, L, H, K)`` (per key dim). Returns its kind.

    Kinds: ``"none"``, ``"scalar"``, ``"key"``. With ``L=None`` the time axis is absent (step functions).
    """
    if log_decay is None:
        return "none"
    check_inexact("log_decay", log_decay, allow_complex=False)
    s = tuple(log_decay.shape)
    lead = (B, H) if L is None else (B, L, H)
    txt = "(B, H)" if L is None else "(B, L, H)"
    if s == lead:
        return "scalar"
    if per_key_ok and s == lead + (K,):
        return "key"
    want = f"{txt} = {lead}" + (f" or {txt[:-1]}, K) = {lead + (K,)}" if per_key_ok else "")
    raise ValueError(f"log_decay must have shape {want}, got {describe(log_decay)}")


def check_beta(beta, B, L, H):
    """``beta`` of shape ``(B, L, H)`` (or ``(B, H)`` per step), real floating."""
    check_inexact("beta", beta, allow_complex=False)
    check_shape("beta", beta, (B, H) if L is None else (B, L, H), "B, H" if L is None else "B, L, H")


def check_state(state, B, H, K, V, *, name: str = "initial_state", normalize: bool = False):
    """State ``(B, H, K, V)``; with ``normalize`` a pair ``(S (B, H, K, V), z (B, H, K))``."""
    if state is None:
        return
    if normalize:
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            is_seq = isinstance(state, (tuple, list))
            got = f"a {type(state).__name__} of length {len(state)}" if is_seq else describe(state)
            raise ValueError(f"{name} must be a pair (S (B, H, K, V), z (B, H, K)) when normalize=True, got {got}")
        S, z = state
        check_state(S, B, H, K, V, name=f"{name}[0]")
        check_inexact(f"{name}[1]", z, allow_complex=False)
        check_shape(f"{name}[1]", z, (B, H, K), "the normaliser z, B, H, K")
        return
    if isinstance(state, (tuple, list)):
        raise ValueError(f"{name} must be one array (B, H, K, V) when normalize=False, got a {type(state).__name__}")
    check_inexact(name, state, allow_complex=False)
    check_shape(name, state, (B, H, K, V), "B, H, K, V")


def check_chunk_size(chunk_size, *, power_of_two: bool = False):
    """``chunk_size`` C: an int >= 1, a power of two for the Pallas kernels. Returns it."""
    chunk_size = check_int("chunk_size", chunk_size)
    if power_of_two and (chunk_size & (chunk_size - 1)) != 0:
        raise ValueError(f"chunk_size={chunk_size} must be a power of two for the Pallas backend")
    return chunk_size
