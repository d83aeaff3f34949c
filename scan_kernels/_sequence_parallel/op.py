"""Sequence parallelism: ``linear_scan``, ``linear_attention``, ``delta_rule`` and ``selective_scan`` with the time
axis sharded over one mesh axis (docs/ops.md §sequence_parallel).

Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim · E channels of
the selective scan · P devices along the sequence axis · n = L / P tokens per device.

Every op here is an affine recurrence in its state, ``s_t = F_t(s_{t-1}) = M_t s_{t-1} + x_t``, so a slice of
``n`` tokens maps the state entering it to the state leaving it by ``s_out = M s_in + e`` with ``M`` the product of
the slice's transitions and ``e`` the slice's end state from a zero state (the parallel-prefix view of a linear
recurrence, Blelloch 1990, §1.4: ``(M1, e1) ∘ (M2, e2) = (M2 M1, M2 e1 + e2)``). Under ``jax.shard_map``, manual
over the sequence axis only (every other mesh axis stays automatic), each device

1. summarises its slice as ``(M_p, e_p)``, scanning it from a zero state,
2. all-gathers the P summaries (``P × state`` numbers, independent of L) and folds them in order, on every device
   (a sequential ``lax.scan`` of P steps): ``c_0 = s_init``, ``c_{p+1} = M_p c_p + e_p``; ``c_p`` enters slice p
   and ``c_P`` is the final state (replicated, so its cotangent needs no collective),
3. corrects its slice with the state that really enters it.

Per op (what step 1 and 3 compute):

* ``linear_scan``: ``M_p = Π a_t`` (a product over the slice, per channel) and ``e_p`` = the end of the slice's scan
  from 0; step 3 scans the slice again from ``c_p``.
* ``linear_attention``: ``M_p = exp(Σ g_t)`` (per head or per key) and, in closed form,
  ``e_p = Σ_t (k_t ⊙ exp(Σ_{r>t} g_r)) v_tᵀ`` (one einsum; all exponents ≤ 0; the normaliser is one more column,
  ``Σ_t k_t ⊙ exp(...)``); step 3 runs the op on the slice from ``c_p``.
* ``delta_rule``: the slice's transition ``M_p = Π_t (I − β_t k_t k_tᵀ) diag(e^{g_t})`` is ``K×K``. It is the
  delta rule's own final state when the state starts at the identity and every value is 0 (each column of S follows
  ``S_t = A_t S_{t-1} + β_t k_t v_tᵀ`` on its own), so one call of the chunked op on the augmented values
  ``[0_K | v]`` from the state ``[I | 0]`` returns ``[M_p | e_p]``: the WY form builds the ``K×K`` chunk
  transitions ``diag(e^{γ_C}) − K̂ᵀW`` and chains them (docs/ops.md §delta_rule); no per-token matrix is formed.
  The same call's outputs are ``[Φ_tᵀ q_t | o_t⁰]`` with ``Φ_t`` the transition from the slice start to t, so step
  3 is one einsum: ``o_t = o_t⁰ + c_pᵀ (Φ_tᵀ q_t)``. Cost: one op call with ``K + V`` value columns.
* ``selective_scan``: ``M_p = exp(A ⊙ Σ_t Δ_t)`` ``(B, E, N)`` and ``e_p`` = the op's ``h_last`` from 0; step 3
  runs the op on the slice from ``c_p`` (its outputs need the per-token states, which are never stored).

``reverse=True`` (``linear_scan``, ``selective_scan``) folds the summaries from the last slice backwards.
Gradients are JAX's autodiff through ``shard_map`` (the transpose of the all-gather is a reduce-scatter) and the
ops' own ``custom_vjp``s; nothing else is stored, so each device's memory is that of the op on ``n`` tokens (plus the
first pass's residuals under differentiation).
"""

import inspect
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from algornn.scan_kernels import delta_rule, linear_attention, linear_scan, selective_scan
from algornn.scan_kernels._common.utils import compute_dtype
from algornn.scan_kernels._common.validate import describe

_mm = partial(jnp.einsum, precision=lax.Precision.HIGHEST)


# ----------------------------------------------------------------------------------------- shared pieces
def _carries(step, init, summary, axis: str, reverse: bool):
    """All-gather the slices' summaries over ``axis`` and fold them in order (module docstring, step 2).

    ``step(c, s) -> c'`` applies one slice's summary ``s`` to the state ``c`` entering it. Returns the state
    entering this device's slice (leaving it, for ``reverse``: the one after it in time) and the final state
    (replicated over ``axis``)."""
    gathered = jax.tree.map(lambda x: lax.all_gather(x, axis), summary)  # (P, ...) each, the same everywhere
    final, entering = lax.scan(lambda c, s: (step(c, s), c), init, gathered, reverse=reverse)
    me = lax.axis_index(axis)
    return jax.tree.map(lambda x: x[me], entering), final


def _time_spec(ndim: int, time_axis: int, axis: str):
    return P(*[axis if i == time_axis else None for i in range(ndim)])


def _linear_scan_slice(arrays, *, axis, reverse, backend, vjp):
    a, b = arrays["a"], arrays["b"]
    dtype = compute_dtype(a.dtype, b.dtype, arrays["h0"].dtype if "h0" in arrays else None)
    h0 = arrays.get("h0")
    h0 = jnp.zeros(b.shape[:-2] + b.shape[-1:], dtype) if h0 is None else h0.astype(dtype)
    end = linear_scan(a, b, reverse=reverse, backend=backend, vjp=vjp)[..., 0 if reverse else -1, :]
    decay = jnp.prod(jnp.broadcast_to(a.astype(dtype), b.shape), axis=-2)  # Π a_t over the slice, batch + (D,)
    c, _ = _carries(lambda c, s: s[0] * c + s[1], h0, (decay, end), axis, reverse)
    return linear_scan(a, b, c, reverse=reverse, backend=backend, vjp=vjp)


def _exclusive_suffix_sum(g):
    """``Σ_{r>t} g_r`` along axis 1 (no cancellation: summed from the end)."""
    incl = lax.cumsum(g, axis=1, reverse=True)
    return jnp.concatenate([incl[:, 1:], jnp.zeros_like(incl[:, :1])], axis=1)


def _linear_attention_slice(arrays, *, axis, normalize, chunk_size, backend):
    q, k, v = arrays["q"], arrays["k"], arrays["v"]
    g = arrays.get("log_decay")
    B, _, H, K = k.shape
    V = v.shape[-1]
    kf, vf = k.astype(jnp.float32), v.astype(jnp.float32)
    if g is None:
        decay = jnp.ones((B, H, 1, 1), jnp.float32)
        kw = kf
    else:
        g = g.astype(jnp.float32)
        w = jnp.exp(_exclusive_suffix_sum(g))  # (B, n, H[, K]): decay from token t to the slice end, ≤ 1
        kw = kf * (w[..., None] if g.ndim == 3 else w)
        tot = jnp.exp(jnp.sum(g, axis=1))  # (B, H[, K])
        decay = tot[..., None, None] if g.ndim == 3 else tot[..., None]  # (B, H, 1 or K, 1)
    end_S = _mm("bnhk,bnhv->bhkv", kw, vf)  # the slice's end state from 0, in closed form
    if normalize:
        end = (end_S, jnp.sum(kw, axis=1))
        init = arrays.get("S0"), arrays.get("z0")
        init = (
            jnp.zeros((B, H, K, V), jnp.float32) if init[0] is None else init[0].astype(jnp.float32),
            jnp.zeros((B, H, K), jnp.float32) if init[1] is None else init[1].astype(jnp.float32),
        )
        step = lambda c, s: (s[0] * c[0] + s[1][0], s[0][..., 0] * c[1] + s[1][1])  # noqa: E731
    else:
        end = end_S
        init = arrays.get("S0")
        init = jnp.zeros((B, H, K, V), jnp.float32) if init is None else init.astype(jnp.float32)
        step = lambda c, s: s[0] * c + s[1]  # noqa: E731
    c, final = _carries(step, init, (decay, end), axis, False)
    o, _ = linear_attention(
        q, k, v, log_decay=g, initial_state=c, normalize=normalize, chunk_size=chunk_size, backend=backend
    )
    return o, final


def _delta_rule_slice(arrays, *, axis, chunk_size, backend):
    q, k, v, beta = arrays["q"], arrays["k"], arrays["v"], arrays["beta"]
    g = arrays.get("log_decay")
    B, n, H, K = k.shape
    V = v.shape[-1]
    q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
    # columns [0, K): the transition Φ from the slice start (state I, values 0); [K, K + V): the slice from state 0
    v_aug = jnp.concatenate([jnp.zeros((B, n, H, K), jnp.float32), v32], axis=-1)
    eye = jnp.broadcast_to(jnp.eye(K, dtype=jnp.float32), (B, H, K, K))
    s_aug = jnp.concatenate([eye, jnp.zeros((B, H, K, V), jnp.float32)], axis=-1)
    o_aug, end = delta_rule(
        q32, k32, v_aug, beta, log_decay=g, initial_state=s_aug, chunk_size=chunk_size, backend=backend
    )
    s0 = arrays.get("S0")
    s0 = jnp.zeros((B, H, K, V), jnp.float32) if s0 is None else s0.astype(jnp.float32)
    step = lambda c, s: _mm("bhij,bhjv->bhiv", s[0], c) + s[1]  # noqa: E731
    c, final = _carries(step, s0, (end[..., :K], end[..., K:]), axis, False)
    o = o_aug[..., K:] + _mm("bnhk,bhkv->bnhv", o_aug[..., :K], c)  # o_t = o_t⁰ + c_pᵀ Φ_tᵀ q_t
    return o.astype(v.dtype), final


def _selective_scan_slice(arrays, *, axis, reverse, chunk_size, backend):
    u, delta, A, Bm, Cm = (arrays[x] for x in ("u", "delta", "A", "B", "C"))
    dtype = compute_dtype(u.dtype, delta.dtype, A.dtype, Bm.dtype, Cm.dtype)
    h0 = arrays.get("h0")
    h0 = jnp.zeros((u.shape[0],) + A.shape, dtype) if h0 is None else h0.astype(dtype)
    kw = dict(reverse=reverse, chunk_size=chunk_size, backend=backend)
    _, end = selective_scan(u, delta, A, Bm, Cm, **kw)
    decay = jnp.exp(jnp.sum(delta.astype(dtype), axis=1)[..., None] * A.astype(dtype)[None])  # (B, E, N): Π exp(Δ_t A)
    c, final = _carries(lambda c, s: s[0] * c + s[1], h0, (decay, end.astype(dtype)), axis, reverse)
    y, _ = selective_scan(u, delta, A, Bm, Cm, D=arrays.get("D"), z=arrays.get("z"), h0=c, **kw)
    return y, final


# --------------------------------------------------------------------------------- per-op argument layout
def _time_axes_linear_scan(args, L):
    a = args["a"]
    a_time = a.ndim - 2 if a.ndim >= 2 and a.shape[-2] == L else None
    return {"a": a_time, "b": args["b"].ndim - 2, "h0": None}


_FAST_WEIGHT_TIME = {"q": 1, "k": 1, "v": 1, "beta": 1, "log_decay": 1, "S0": None, "z0": None}
_SELECTIVE_TIME = {"u": 1, "delta": 1, "A": None, "B": 1, "C": 1, "D": None, "z": 1, "h0": None}


def _split_state(args, normalize):
    state = args.pop("initial_state")
    if normalize and state is not None:
        args["S0"], args["z0"] = state
    else:
        args["S0"] = state
    return args


def _layout(op_name, args):
    """``(arrays, time_axes, L, local_fn, out_specs)`` of a bound call; ``out_specs`` takes the axis name."""
    if op_name == "linear_scan":
        L = args["b"].shape[-2]
        fn = partial(_linear_scan_slice, reverse=args["reverse"], backend=args["backend"], vjp=args["vjp"])
        arrays = {x: args[x] for x in ("a", "b", "h0")}
        b_nd = args["b"].ndim
        return arrays, _time_axes_linear_scan(args, L), L, fn, lambda ax: _time_spec(b_nd, b_nd - 2, ax)
    if op_name == "selective_scan":
        L = args["u"].shape[1]
        fn = partial(
            _selective_scan_slice, reverse=args["reverse"], chunk_size=args["chunk_size"], backend=args["backend"]
        )
        arrays = {x: args[x] for x in _SELECTIVE_TIME}
        return arrays, _SELECTIVE_TIME, L, fn, lambda ax: (_time_spec(3, 1, ax), P())
    L = args["q"].shape[1]
    if op_name == "linear_attention":
        args = _split_state(dict(args), args["normalize"])
        fn = partial(
            _linear_attention_slice, normalize=args["normalize"], chunk_size=args["chunk_size"], backend=args["backend"]
        )
        names = ("q", "k", "v", "log_decay", "S0", "z0")
    else:
        args = _split_state(dict(args), False)
        fn = partial(_delta_rule_slice, chunk_size=args["chunk_size"], backend=args["backend"])
        names = ("q", "k", "v", "beta", "log_decay", "S0")
    arrays = {x: args.get(x) for x in names}
    return arrays, _FAST_WEIGHT_TIME, L, fn, lambda ax: (_time_spec(4, 1, ax), P())


_OPS = {
    "linear_scan": linear_scan,
    "linear_attention": linear_attention,
    "delta_rule": delta_rule,
    "selective_scan": selective_scan,
}


def _resolve_mesh(mesh, axis, name):
    """The mesh to shard over and the size of ``axis`` in it (1: run the op as it is)."""
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty or axis not in mesh.axis_names:
            return None, 1  # no context mesh with this axis: the axis has size 1
    elif axis not in mesh.axis_names:
        raise ValueError(f"{name}: axis={axis!r} is not an axis of the mesh, whose axes are {tuple(mesh.axis_names)}")
    return mesh, mesh.shape[axis]


def sequence_parallel(op, axis: str = "seq", *, mesh=None):
    """``op`` with its time axis sharded over the mesh axis ``axis``: same arguments, same results (exact).

    Args:
      op: one of ``linear_scan``, ``linear_attention``, ``delta_rule``, ``selective_scan`` (the public functions of
        ``algornn.scan_kernels``).
      axis: the mesh axis the time axis ``L`` is split over, in ``P`` equal slices of ``n = L / P`` tokens (``L`` must
        be divisible by ``P``). Every other mesh axis (e.g. a ``"data"`` axis sharding the batch) stays automatic.
      mesh: a ``jax.sharding.Mesh``; None uses the mesh set by ``jax.set_mesh``, and without one, or when that mesh
        has no axis ``axis``, the op runs as it is (an axis of size 1).

    Returns:
      A function with ``op``'s signature and results. Each device scans its slice from a zero state, the slices'
      summaries (end state and state transition) are all-gathered and folded, and each device corrects its slice
      (module docstring); gradients flow through ``jax.shard_map`` to every input.
    """
    name = next((n for n, f in _OPS.items() if f is op), None)
    if name is None:
        raise ValueError(
            f"sequence_parallel: op={getattr(op, '__name__', op)!r} is not one of the supported ops {list(_OPS)} "
            "(pass the function from algornn.scan_kernels)"
        )
    if not isinstance(axis, str) or not axis:
        raise ValueError(f"sequence_parallel: axis={axis!r} must be the name of a mesh axis (a non-empty string)")
    if mesh is not None and not isinstance(mesh, (jax.sharding.Mesh, jax.sharding.AbstractMesh)):
        raise ValueError(f"sequence_parallel: mesh={mesh!r} must be a jax.sharding.Mesh or None")
    signature = inspect.signature(op)
    where = f"sequence_parallel({name}, axis={axis!r})"

    def run(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        call = dict(bound.arguments)
        jax.eval_shape(partial(op, **{k: v for k, v in call.items() if not _is_array_tree(v)}), **_arrays_of(call))
        m, size = _resolve_mesh(mesh, axis, where)
        if size == 1:
            return op(*args, **kwargs)
        arrays, time_axes, L, fn, out_specs = _layout(name, call)
        if L % size:
            first = {"linear_scan": "b", "selective_scan": "u"}.get(name, "q")
            raise ValueError(
                f"{where}: the time axis of {first} ({describe(arrays[first])}) has L={L} steps, which the "
                f"{size} devices of mesh axis {axis!r} cannot split evenly; expected a multiple of {size}"
            )
        arrays = {k: x for k, x in arrays.items() if x is not None}
        in_specs = {
            k: P() if time_axes[k] is None else _time_spec(x.ndim, time_axes[k], axis) for k, x in arrays.items()
        }
        sharded = jax.shard_map(
            partial(fn, axis=axis),
            mesh=m,
            in_specs=(in_specs,),
            out_specs=out_specs(axis),
            axis_names={axis},
            check_vma=False,
        )
        out = sharded(arrays)
        if name == "linear_attention" and call["normalize"]:
            return out[0], tuple(out[1])
        return out

    run.__name__ = f"sequence_parallel_{name}"
    run.__doc__ = f"``{name}`` with the time axis sharded over the mesh axis {axis!r} (see ``sequence_parallel``)."
    return run


def _is_array_tree(value) -> bool:
    leaves = jax.tree.leaves(value)
    return bool(leaves) and all(isinstance(x, (jax.Array, jax.core.Tracer)) or hasattr(x, "shape") for x in leaves)


def _arrays_of(call):
    return {k: v for k, v in call.items() if _is_array_tree(v)}
