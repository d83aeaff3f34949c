"""experiments: long-range tasks, configs, training / evaluation CLIs, benchmarks and plots.

``train_and_evaluate`` is imported lazily (module ``__getattr__``) so ``import experiments.tasks`` does
not pull in Flax, Optax and Orbax.
"""

_LAZY = {
    "train_and_evaluate": ("algornn.experiments.trainer", "train_and_evaluate"),
    "evaluate_checkpoint": ("algornn.experiments.evaluate", "evaluate_checkpoint"),
    "Config": ("algornn.experiments.config", "Config"),
    "get_preset": ("algornn.experiments.presets", "get_preset"),
    "list_presets": ("algornn.experiments.presets", "list_presets"),
    "model_from_config": ("algornn.experiments._models", "model_from_config"),
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'algornn.experiments' has no attribute {name!r}")
