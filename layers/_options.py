"""Option and input handling shared by every layer.

Options: every mixer takes its options as keyword arguments with defaults in its signature
(``S4D(d_model, *, d_state=64, ..., dtype=jnp.float32, param_dtype=jnp.float32, rngs)``) and keeps them, validated,
as a frozen dataclass in ``layer.options`` (``record_options``). ``mixer_option_names(cls)`` reads the allowed names
from the constructor signature; ``check_mixer_options`` turns an unknown key of a ``mixer_options`` dict into a
``ValueError`` that names the mixer and lists what is allowed.

The generic ``check_choice/bool/int/float`` come from ``scan_kernels._common.validate``. The ``check_*`` helpers take
``(name, value, ...)`` and raise ``ValueError`` naming the argument, the value and what
is allowed. ``check_state`` validates the state passed to ``step`` against the state ``init_state`` builds.

Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim.
"""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np

# The generic checkers live in one module for the whole package; layers re-export them for their own modules.
from algornn.scan_kernels._common.packing import check_segment_ids_shape as _check_segment_ids
from algornn.scan_kernels._common.validate import check_bool, check_choice, check_float, check_int  # noqa: F401

# Constructor arguments that are not options of the mixer itself: the model width, the RNG streams and the
# two dtypes (a SequenceBlock / SequenceModel passes those three to its mixer).
NOT_OPTIONS = ("self", "d_model", "rngs", "dtype", "param_dtype")
DTYPES = ("float32", "bfloat16", "float16", "float64")


def mixer_option_names(cls) -> list[str]:
    """The option names of mixer class ``cls``: its keyword-only constructor arguments, minus ``rngs``/dtypes."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in NOT_OPTIONS]


def takes_keyword(cls, name: str) -> bool:
    """Whether ``cls(...)`` accepts the keyword argument ``name`` (explicitly or through ``**kwargs``)."""
    params = inspect.signature(cls.__init__).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def check_mixer_options(cls, options: dict) -> None:
    """Unknown keys of a ``mixer_options`` dict raise ``ValueError`` naming ``cls`` and its allowed options.

    A mixer class whose constructor takes ``**kwargs`` is not checked here (its names are not in the signature).
    """
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    allowed = mixer_option_names(cls)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        extra = ""
        if set(unknown) & {"dtype", "param_dtype", "rngs"}:
            extra = " (dtype, param_dtype and rngs are arguments of the block / model, not mixer options)"
        raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}{extra}; allowed options are {sorted(allowed)}")


def record_options(cls, values: dict):
    """The frozen options dataclass ``cls`` from the constructor's ``locals()`` (its ``__post_init__`` validates)."""
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


def check_dt_range(dt_min, dt_max) -> None:
    check_float("dt_min", dt_min)
    check_float("dt_max", dt_max)
    if not dt_min <= dt_max:
        raise ValueError(f"dt_min={dt_min!r} must be <= dt_max={dt_max!r}")


def check_dtypes(owner: str, dtype, param_dtype):
    """``dtype`` (compute) and ``param_dtype`` (parameters) must be floating dtypes; returns them as numpy dtypes."""
    out = []
    for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        try:
            dt = jnp.dtype(value)
        except TypeError:
            dt = None
        if dt is None or dt.name not in DTYPES:
            raise ValueError(f"{owner}: {name}={value!r} is not one of {list(DTYPES)}")
        out.append(dt)
    return tuple(out)


def check_sequence(owner: str, x, d_model: int):
    """``x`` must be a float array ``(B, L, D)`` with ``D == d_model`` and ``L >= 1``."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or len(shape) != 3 or shape[-1] != d_model or shape[1] < 1:
        raise ValueError(f"{owner}: x must have shape (B, L, D={d_model}); got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{owner}: x must be a floating array (B, L, D); got dtype {dtype}")


def check_token(owner: str, x_t, d_model: int):
    """``x_t`` must be a float array ``(B, D)`` with ``D == d_model``."""
    shape = getattr(x_t, "shape", None)
    dtype = getattr(x_t, "dtype", None)
    if shape is None or len(shape) != 2 or shape[-1] != d_model:
        raise ValueError(f"{owner}.step: x_t must have shape (B, D={d_model}); got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{owner}.step: x_t must be a floating array (B, D); got dtype {dtype}")


def is_concrete(value) -> bool:
    """True for Python numbers and concrete arrays; False for values traced by ``jit``/``grad``/``vmap``."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def check_dt_scale(owner: str, dt_scale) -> None:
    """``dt_scale`` multiplies every step size Δ at call time (sampling-rate change): a positive scalar.

    A concrete value (Python number or 0-d array) must be finite and > 0. A traced value (under ``jit``) must be a
    real scalar; its sign cannot be checked, and a value <= 0 gives unstable or undefined outputs.
    """
    shape, dtype = np.shape(dt_scale), getattr(dt_scale, "dtype", None)
    if isinstance(dt_scale, bool) or shape != ():
        ok = False
    elif dtype is not None:
        ok = jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    else:
        ok = isinstance(dt_scale, (int, float, np.integer, np.floating))
    if not ok:
        raise ValueError(
            f"{owner}: dt_scale={dt_scale!r} must be a positive real scalar "
            f"(got shape {shape}, dtype {dtype or type(dt_scale).__name__})"
        )
    if is_concrete(dt_scale) and not (np.isfinite(float(dt_scale)) and float(dt_scale) > 0):
        raise ValueError(f"{owner}: dt_scale={float(dt_scale)!r} must be a finite number > 0")


def check_discrete_dt_scale(owner: str, dt_scale, why: str) -> None:
    """Discrete-time mixers have no step size Δ: ``dt_scale`` must be the number 1 (the default)."""
    if isinstance(dt_scale, bool) or not is_concrete(dt_scale) or np.shape(dt_scale) != () or float(dt_scale) != 1.0:
        shown = "a traced value" if not is_concrete(dt_scale) else repr(dt_scale)
        raise ValueError(
            f"{owner}: dt_scale={shown} is not supported: {why}, so it has no step size Δ to scale; "
            f"dt_scale must be 1. The continuous-time mixers S4, S4D, S5, LMU, HiPPORNN, LSSL, "
            f"SelectiveSSM and Mamba2 take dt_scale"
        )


def check_sequence_axis(value, *, scan: bool = True, why: str = "") -> None:
    """``sequence_axis`` (the mesh axis the time axis is sharded over) must be None or a non-empty string, and
    needs the mixer's scan form (``scan=False`` refuses it, with ``why``)."""
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"sequence_axis={value!r} must be None or the name of a mesh axis (a non-empty string)")
    if value is not None and not scan:
        raise ValueError(f"sequence_axis={value!r} needs a scan over time: {why}")


def check_batch_size(owner: str, batch_size) -> None:
    check_int(f"{owner}.init_state: batch_size", batch_size)


def check_causal(owner: str, bidirectional: bool) -> None:
    """Recurrent (``init_state`` / ``step``) use needs a causal layer."""
    if bidirectional:
        raise ValueError(f"{owner}: step is causal; bidirectional=True has no recurrent form")


def check_not_bidirectional(owner: str, bidirectional) -> None:
    """Mixers built around a nonlinear recurrent cell have no bidirectional form."""
    check_bool("bidirectional", bidirectional)
    if bidirectional:
        raise ValueError(
            f"{owner}: bidirectional=True is not supported: its hidden state is a nonlinear recurrence "
            f"(h_t depends on h_(t-1) through a tanh/GRU cell), so there is no anti-causal linear "
            f"branch to add over the same recurrence; use a linear mixer (S4, S4D, S5, LRU, LSSL, "
            f"SelectiveSSM) for a bidirectional model"
        )


def _describe(tree) -> str:
    def leaf(x):
        shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
        if shape is None or dtype is None:
            return f"<{type(x).__name__}>"
        return f"{jnp.dtype(dtype).name}{list(shape)}"

    leaves, treedef = jax.tree.flatten(tree, is_leaf=lambda x: x is None)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        return leaf(leaves[0])
    return str(jax.tree.unflatten(treedef, [leaf(x) for x in leaves])).replace("'", "")


def check_state(owner: str, state, expected) -> None:
    """``state`` must have the structure, shapes and dtypes of ``expected`` (a tree of ``jax.ShapeDtypeStruct``).

    Raises ``ValueError`` naming both, e.g. ``expected complex64[2, 8, 4], got float32[3, 8, 4]``.
    """
    leaves, treedef = jax.tree.flatten(state, is_leaf=lambda x: x is None)
    want, want_def = jax.tree.flatten(expected)
    ok = treedef == want_def and all(
        getattr(g, "shape", None) == w.shape and getattr(g, "dtype", None) == w.dtype for g, w in zip(leaves, want)
    )
    if not ok:
        raise ValueError(
            f"{owner}.step: state does not match init_state(batch_size={_batch_of(expected)}): "
            f"expected {_describe(expected)}, got {_describe(state)}"
        )


def _batch_of(expected):
    leaf = jax.tree.leaves(expected)[0]
    return leaf.shape[0] if leaf.shape else "?"


def zeros_of(spec):
    """Zeros with the shapes and dtypes of a tree of ``jax.ShapeDtypeStruct``."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), spec)


# ----------------------------------------------------------------------------------------------------------------
# irregular sampling: per-step elapsed times


def check_dt(owner: str, dt, shape: tuple, *, name: str = "dt"):
    """Per-step elapsed times: ``dt (B, L)`` in ``__call__`` (``dt_t (B,)`` in ``step``, ``name="dt_t"``).

    ``dt[b, t]`` is the time since the previous sample of sequence b (for t = 0: since the start), in units of
    the regular grid: all ones is the regularly sampled sequence. Must be a real array of exactly ``shape``;
    a concrete array must hold finite values > 0 (a ``ValueError`` names the first bad ones). A traced array
    (under ``jit``) is checked for shape and dtype only: a value <= 0 or NaN there gives unstable or NaN outputs.
    Returns ``dt`` as float32.
    """
    want = "(B, L)" if len(shape) == 2 else "(B,)"
    got_shape, dtype = np.shape(dt), getattr(dt, "dtype", None)
    if dtype is None:
        dt = np.asarray(dt)
        dtype = dt.dtype
    real = (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)) and dtype != jnp.bool_
    if tuple(got_shape) != tuple(shape) or not real:
        raise ValueError(
            f"{owner}: {name} must be a real array of shape {want} = {tuple(shape)} (positive elapsed time before "
            f"each sample, in grid steps); got shape {tuple(got_shape)}, dtype {jnp.dtype(dtype).name}"
        )
    if is_concrete(dt):
        values = np.asarray(dt, np.float64)
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            where = np.argwhere(bad)[:5]
            shown = ", ".join(f"{float(values[tuple(i)])!r} at {tuple(int(j) for j in i)}" for i in where)
            raise ValueError(
                f"{owner}: {name} must hold finite elapsed times > 0; got {shown}"
                + (f" (and {int(bad.sum()) - len(where)} more)" if bad.sum() > len(where) else "")
            )
    return jnp.asarray(dt, jnp.float32)


def next_step(a):
    """``a`` shifted one step back in time along axis 1, the last step repeated: ``out[:, t] = a[:, t+1]``.

    A reverse (anti-causal) recurrence going from sample t+1 to sample t crosses the gap ``dt[:, t+1]``; the
    last sample has no successor and keeps its own gap (so a constant ``dt`` stays constant).
    """
    return jnp.concatenate([a[:, 1:], a[:, -1:]], axis=1)


def takes_dt(mixer) -> bool:
    """Whether ``mixer.__call__`` accepts per-step elapsed times ``dt`` (the continuous-time mixers)."""
    return "dt" in inspect.signature(mixer.__call__).parameters


# ----------------------------------------------------------------------------------------------------------------
# packed sequences: several sequences per row, told apart by segment ids


def check_segment_ids(owner: str, segment_ids, shape: tuple):
    """``segment_ids`` must be an integer array of ``shape`` = ``(B, L)`` of ``x`` (0 = padding, a change of id
    starts a new sequence; docs/layers.md §Packed sequences). Returns it as a JAX array."""
    try:
        return _check_segment_ids(segment_ids, shape, "(B, L): the batch and length of x")
    except ValueError as e:
        raise ValueError(f"{owner}: {e}") from None


def mask_padding(y, segment_ids):
    """``y (B, L, ...)`` with the padding positions (``segment_ids == 0``) set to exactly 0; ``y`` if no ids."""
    if segment_ids is None:
        return y
    pad = (segment_ids == 0).reshape(segment_ids.shape + (1,) * (y.ndim - 2))
    return jnp.where(pad, jnp.zeros((), y.dtype), y)


def takes_segment_ids(mixer) -> bool:
    """Whether ``mixer.__call__`` accepts ``segment_ids`` (packed sequences)."""
    return "segment_ids" in inspect.signature(mixer.__call__).parameters
