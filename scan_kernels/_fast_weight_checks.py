"""Input validation shared by the fast-weight recurrences (linear attention, delta rule).

Shape legend: B batch · L length · H heads · K key dim · V value dim · C chunk.

Every check raises a ``ValueError`` that names the argument, its shape/dtype and what was expected,
so a bad call fails at the boundary instead of deep inside an XLA trace.
"""

import jax.numpy as jnp
import numpy as np

_INPUT_DTYPES = ("float32", "bfloat16")


def _dtype_name(x) -> str:
    return np.dtype(x.dtype).name


def _shape_of(x, name):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ValueError(f"{name} must be an array, got {type(x).__name__}")
    return tuple(x.shape)


def check_qkv(q, k, v, *, time_axis: bool = True):
    """Check ``q, k (B, L, H, K)``, ``v (B, L, H, V)`` (or ``(B, H, K)``/``(B, H, V)`` per step).

    Returns ``(B, L, H, K, V)`` (``L`` is None when ``time_axis=False``).
    """
    rank = 4 if time_axis else 3
    legend = "(B, L, H, K)" if time_axis else "(B, H, K)"
    vlegend = "(B, L, H, V)" if time_axis else "(B, H, V)"
    qs, ks, vs = _shape_of(q, "q"), _shape_of(k, "k"), _shape_of(v, "v")
    for name, s, leg in (("q", qs, legend), ("k", ks, legend), ("v", vs, vlegend)):
        if len(s) != rank:
            raise ValueError(f"{name} must have shape {leg}, got shape {s}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if _dtype_name(x) not in _INPUT_DTYPES:
            raise ValueError(f"{name} must be float32 or bfloat16, got dtype {_dtype_name(x)}")
    if not (_dtype_name(q) == _dtype_name(k) == _dtype_name(v)):
        raise ValueError(
            f"q, k, v must share one dtype, got {_dtype_name(q)}, {_dtype_name(k)}, {_dtype_name(v)}"
        )
    if ks != qs:
        raise ValueError(f"k must have the shape of q {legend}={qs}, got shape {ks}")
    if vs[:-1] != qs[:-1]:
        raise ValueError(f"v must have shape {vlegend} with {vlegend[:-3]}) = {qs[:-1]} as in q, got shape {vs}")
    if time_axis:
        B, L, H, K = qs
        return B, L, H, K, vs[-1]
    B, H, K = qs
    return B, None, H, K, vs[-1]


def _check_float(x, name):
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a real floating array, got dtype {_dtype_name(x)}")


def check_log_decay(log_decay, B, L, H, K, *, per_key_ok: bool = True):
    """``None``, ``(B, L, H)`` (scalar per head) or ``(B, L, H, K)`` (per key dim). Returns its kind.

    Kinds: ``"none"``, ``"scalar"``, ``"key"``. With ``L=None`` the time axis is absent (step functions).
    """
    if log_decay is None:
        return "none"
    s = _shape_of(log_decay, "log_decay")
    _check_float(log_decay, "log_decay")
    lead = (B, H) if L is None else (B, L, H)
    txt = "(B, H)" if L is None else "(B, L, H)"
    if s == lead:
        return "scalar"
    if per_key_ok and s == lead + (K,):
        return "key"
    want = f"{txt} = {lead}" + (f" or {txt[:-1]}, K) = {lead + (K,)}" if per_key_ok else "")
    raise ValueError(f"log_decay must have shape {want}, got shape {s}")


def check_beta(beta, B, L, H):
    """``beta`` of shape ``(B, L, H)`` (or ``(B, H)`` per step), real floating."""
    s = _shape_of(beta, "beta")
    _check_float(beta, "beta")
    want = (B, H) if L is None else (B, L, H)
    txt = "(B, H)" if L is None else "(B, L, H)"
    if s != want:
        raise ValueError(f"beta must have shape {txt} = {want}, got shape {s}")


def check_state(state, B, H, K, V, *, name: str = "initial_state", normalize: bool = False):
    """State ``(B, H, K, V)``; with ``normalize`` a pair ``(S (B, H, K, V), z (B, H, K))``."""
    if state is None:
        return
    if normalize:
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(
                f"{name} must be a pair (S (B, H, K, V), z (B, H, K)) when normalize=True, got {type(state).__name__}"
            )
        S, z = state
        check_state(S, B, H, K, V, name=f"{name}[0]")
        zs = _shape_of(z, f"{name}[1]")
        _check_float(z, f"{name}[1]")
        if zs != (B, H, K):
            raise ValueError(f"{name}[1] (normaliser z) must have shape (B, H, K) = {(B, H, K)}, got shape {zs}")
        return
    if isinstance(state, (tuple, list)):
        raise ValueError(f"{name} must be one array (B, H, K, V) when normalize=False, got a {type(state).__name__}")
    s = _shape_of(state, name)
    _check_float(state, name)
    if s != (B, H, K, V):
        raise ValueError(f"{name} must have shape (B, H, K, V) = {(B, H, K, V)}, got shape {s}")


def check_chunk_size(chunk_size, *, power_of_two: bool = False):
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if power_of_two and (chunk_size & (chunk_size - 1)) != 0:
        raise ValueError(f"chunk_size must be a power of two for the Pallas backend, got {chunk_size}")
    return int(chunk_size)
