"""Backend selection, in one place for every op of ``scan_kernels``.

``backend=None`` (auto) picks the Pallas kernel on a GPU and the XLA form elsewhere;
``"reference"`` is the plain ``lax.scan`` loop that tests compare against; ``"xla"`` is the fastest
pure-XLA form for the device; ``"pallas"`` is the Pallas kernel (interpret mode off-GPU, so CPU CI
exercises the same kernel code).
"""

import jax

BACKENDS = ("reference", "xla", "pallas")


def on_gpu() -> bool:
    """True when the default JAX backend is a GPU."""
    return jax.default_backend() == "gpu"


def resolve_backend(backend, *, arg_name: str = "backend") -> str:
    """Validate ``backend`` and turn ``None`` into the concrete choice for this device."""
    if backend is None:
        return "pallas" if on_gpu() else "xla"
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{arg_name}={backend!r} is not one of None (auto), " + ", ".join(repr(b) for b in BACKENDS))
    return backend


def pallas_interpret() -> bool:
    """Pallas kernels run in interpret mode (compiled through XLA) when no GPU is present."""
    return not on_gpu()
