"""AlgoRNN: state-space and linear-recurrence sequence models in JAX on one recurrence core.

Subpackages (imported on first use, so ``import algornn`` stays cheap):

- ``algornn.scan_kernels``: the recurrence core (linear scans, fast-weight recurrences; reference, XLA, Pallas)
- ``algornn.ssm``: state-space math (HiPPO, discretisation, convolution kernels, initialisers)
- ``algornn.layers``: Flax NNX mixers, blocks and models
- ``algornn.experiments``: tasks, configs, training / evaluation CLIs, benchmarks
- ``algornn.checkpoints``: save / restore / load-for-evaluation on Orbax

The repository's top-level folders are these subpackages; ``pyproject.toml`` maps them under ``algornn``
(``docs/architecture.md``).
"""

import importlib as _importlib

__version__ = "0.2.0"

_SUBPACKAGES = ("scan_kernels", "ssm", "layers", "experiments", "checkpoints")
__all__ = ["__version__", *_SUBPACKAGES]


def __getattr__(name):
    if name in _SUBPACKAGES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBPACKAGES))
