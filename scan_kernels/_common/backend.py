"""Backend selection: one rule for every op of ``scan_kernels`` (docs/backends.md §How auto picks a backend).

``"reference"`` is the plain ``lax.scan`` loop that tests compare against; ``"xla"`` the fastest pure-XLA form
for the device; ``"pallas"`` the Pallas kernel (interpret mode off-GPU, so CPU CI exercises the kernel code).

Every public op calls :func:`resolve_backend` with a *probe*: a function that lowers and compiles the op's
Pallas kernel(s) for the shapes and dtypes of the call at hand. The rule:

* ``backend=None`` (auto): ``"pallas"`` on a GPU where the probe compiles, else ``"xla"`` (with a warning naming
  the op, the shapes and the compiler's error when a GPU could not compile it). Off-GPU: ``"xla"``, no probe.
* ``backend="pallas"``: off-GPU it runs in interpret mode; on a GPU where the probe fails it raises a
  ``ValueError`` that names the op, shapes and error and suggests ``backend=None`` or ``"xla"``, instead of a
  compiler trace from deep inside the call.
* ``"reference"`` / ``"xla"`` are returned as given.

Probe results are cached per ``(op, key)``, the key holding the shapes, dtypes and static options of the call,
so each distinct configuration is compiled once more than it would be anyway, and only on a GPU. The probe
lowers abstract ``jax.ShapeDtypeStruct`` inputs, so it also works while the op is being traced under ``jit``.
"""

import warnings

import jax

BACKENDS = ("reference", "xla", "pallas")

_PROBED: dict = {}  # (op, key) -> None when the kernel compiled, else the reason it did not


def on_gpu() -> bool:
    """True when the default JAX backend is a GPU."""
    return jax.default_backend() == "gpu"


def pallas_interpret() -> bool:
    """Pallas kernels run in interpret mode (compiled through XLA) when no GPU is present."""
    return not on_gpu()


def check_backend(backend, *, arg_name: str = "backend"):
    """``backend`` must be None (auto) or one of :data:`BACKENDS`; returns it unchanged."""
    if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
        raise ValueError(f"{arg_name}={backend!r} is not one of None (auto), " + ", ".join(repr(b) for b in BACKENDS))
    return backend


def probe_key(**named) -> tuple:
    """The cache key of a probe, in call order: ``(name, shape, dtype)`` for each array (None is left out) and
    ``(name, value)`` for each static option."""
    key = []
    for name, x in named.items():
        if x is None:
            continue
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            key.append((name, tuple(x.shape), jax.numpy.dtype(x.dtype).name))
        else:
            key.append((name, x))
    return tuple(key)


def abstract(*arrays):
    """``jax.ShapeDtypeStruct`` of each array (None stays None): what a probe lowers with."""
    return tuple(None if a is None else jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays)


def _describe_key(key) -> str:
    return ", ".join(f"{k[0]} {k[1]} {k[2]}" if len(k) == 3 else f"{k[0]}={k[1]!r}" for k in key)


def pallas_failure(op: str, key, probe) -> str | None:
    """None when ``probe()`` compiles the ``op`` kernel for ``key``, else a one-line reason (cached per key)."""
    if (op, key) not in _PROBED:
        try:
            probe()
            _PROBED[(op, key)] = None
        except Exception as e:  # noqa: BLE001 - any lowering/compile failure means "this kernel cannot run here"
            first = (str(e).strip().splitlines() or [""])[0]
            _PROBED[(op, key)] = f"{type(e).__name__}: {first[:300]}"
    return _PROBED[(op, key)]


def clear_probe_cache() -> None:
    """Forget all probe results (for tests, or after changing the device/JAX configuration)."""
    _PROBED.clear()


def resolve_backend(
    backend, *, op: str | None = None, probe=None, key=(), arg_name: str = "backend", gpu: bool | None = None
) -> str:
    """The concrete backend for one call of ``op`` (rule in the module docstring).

    Args:
      backend: ``None`` (auto) | ``"reference"`` | ``"xla"`` | ``"pallas"``.
      op: the op's name, for messages and the probe cache.
      probe: zero-argument function that lowers and compiles the op's Pallas kernel(s) for this call's shapes
        and dtypes, raising if they do not compile. ``None``: no shapes at hand, the device decides alone
        (``"pallas"`` on a GPU), as benchmarks use it to label what auto means.
      key: hashable description of the call (:func:`probe_key`), the probe's cache key.
      gpu: whether a GPU runs the kernel; default :func:`on_gpu`.
    """
    backend = check_backend(backend, arg_name=arg_name)
    if backend in ("reference", "xla"):
        return backend
    if not (on_gpu() if gpu is None else gpu):
        return "pallas" if backend == "pallas" else "xla"  # explicit "pallas" runs in interpret mode
    if probe is None:
        return "pallas"
    reason = pallas_failure(op, key, probe)
    if reason is None:
        return "pallas"
    where = f"the Pallas {op} kernel does not compile here for {_describe_key(key)} ({reason})"
    if backend is None:
        warnings.warn(f"{where}; auto backend uses XLA", stacklevel=3)
        return "xla"
    raise ValueError(f"{arg_name}='pallas': {where}; use {arg_name}=None (auto) or {arg_name}='xla'")
