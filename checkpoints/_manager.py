"""Training checkpoints on Orbax: model state, optimizer state, step, data position, RNG and config.

Layout of a checkpoint directory (one Orbax ``CheckpointManager`` root, absolute path)::

    DIR/<step>/model       nnx.state(model): params, batch statistics, RNG streams (StandardSave)
    DIR/<step>/optimizer   nnx.state(optimizer): step count and optimizer moments (StandardSave); absent in
                           an inference-only checkpoint (saved with ``optimizer=None``)
    DIR/<step>/meta        JSON: format tag, step, data position, model builder, model spec, config

Orbax writes each step into a ``*.orbax-checkpoint-tmp*`` directory and renames it when complete, so a
process killed during a save leaves no half-written step behind that ``latest_step`` would return.
Retention combines ``LatestN`` with ``BestN`` (keeping only ``BestN`` can delete the newest step, see
docs/architecture.md §Checkpoints): the latest ``keep_latest`` steps and the ``keep_best`` steps with the best
tracked metric survive. Restoring goes into ``nnx.eval_shape`` targets that carry explicit shardings (replicated
over a mesh, or one device), so a checkpoint saved on 4 devices restores onto 1 and vice versa.

Several processes (``jax.distributed``): every process constructs the manager on the same (shared) directory and
calls ``save`` / ``restore`` / ``load`` with the same arguments; Orbax writes the arrays cooperatively (a replicated
array once), process 0 writes ``meta`` and renames the finished step, and the processes meet at barriers
(docs/distributed.md §Checkpoints). A checkpoint written by N processes restores in any number of processes on
any number of devices, since everything it holds is replicated.
"""

import importlib
import logging
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding
from orbax.checkpoint import checkpoint_managers as cm

FORMAT = "algornn-checkpoint-v1"
_ITEMS = ("model", "optimizer", "meta")
_REQUIRED = ("model", "meta")  # the optimizer item is optional (inference-only checkpoints)
_EXPECTED = (
    "<step>/{model,meta} subdirectories, plus <step>/optimizer for a training checkpoint, "
    "as algornn-train or CheckpointManager.save writes them"
)


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, empty, foreign or corrupted."""


def _quiet_absl():
    # Orbax logs one warning per save without metrics and per unrestored item; keep CLIs readable.
    logging.getLogger("absl").setLevel(logging.ERROR)


def _abstract_target(tree, mesh):
    """ShapeDtypeStructs with explicit shardings: replicated over ``mesh``, else on this process's first device."""
    if mesh is not None:
        sharding = NamedSharding(mesh, PartitionSpec())
    else:
        sharding = SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


def _step_dirs(directory):
    """Complete step numbers under ``directory`` (Orbax tmp directories and foreign names skipped)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


class CheckpointManager:
    """Save and restore training state in ``directory`` (made absolute; created when missing).

    ``best_metric`` names the entry of ``metrics`` passed to ``save`` that ranks checkpoints
    (larger is better when ``best_mode="max"``). Steps saved without that metric are kept only while
    they are among the latest ``keep_latest``.
    """

    def __init__(
        self, directory, *, keep_latest=1, keep_best=1, best_metric="val_accuracy", best_mode="max", create=True
    ):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode: {best_mode!r} is not one of ['max', 'min']")
        if keep_latest < 1:
            raise ValueError(f"keep_latest: expected >= 1, got {keep_latest}")
        _quiet_absl()
        self.directory = os.path.abspath(os.fspath(directory))
        if not create and not os.path.isdir(self.directory):
            raise CheckpointError(f"checkpoint directory {self.directory} does not exist")
        self.best_metric = best_metric
        metric = lambda m: m[best_metric]  # noqa: E731
        policies = [cm.LatestN(n=keep_latest)]
        if keep_best > 0:
            policies.append(
                cm.BestN(
                    get_metric_fn=metric,
                    reverse=(best_mode == "min"),
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            best_fn=metric,
            best_mode=best_mode,
            create=create,
            preservation_policy=cm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=True,
            # A read-only manager (evaluation) leaves the directory as it is; Orbax's cleanup runs in a thread
            # that a process exiting right after an error would interrupt mid-way (a traceback at shutdown).
            cleanup_tmp_directories=create,
        )
        self._check_foreign()  # before Orbax starts its threads, so a refused directory leaves none behind
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    def _check_foreign(self):
        if not os.path.isdir(self.directory):
            return
        entries = [n for n in os.listdir(self.directory) if not n.startswith(".")]
        steps = _step_dirs(self.directory)
        if entries and not steps and not any(".orbax-checkpoint-tmp" in n for n in entries):
            raise CheckpointError(
                f"{self.directory} is not an AlgoRNN checkpoint directory: it holds {sorted(entries)[:5]} but "
                f"no step subdirectories; expected {_EXPECTED}"
            )
        for step in steps:
            missing = [i for i in _REQUIRED if not os.path.isdir(os.path.join(self.directory, str(step), i))]
            if missing:
                raise CheckpointError(
                    f"{self.directory}/{step} is not a complete AlgoRNN checkpoint: missing "
                    f"{missing}; expected subdirectories {list(_REQUIRED)} (and 'optimizer' "
                    "for a training checkpoint)"
                )

    # ------------------------------------------------------------------------------------------------

    def latest_step(self):
        """The newest complete step, or None."""
        self._manager.reload()
        return self._manager.latest_step()

    def best_step(self):
        """The step with the best tracked metric (the latest when none has one), or None."""
        self._manager.reload()
        return self._manager.best_step() or self._manager.latest_step()

    def all_steps(self):
        self._manager.reload()
        return list(self._manager.all_steps())

    def save(self, step, *, model, optimizer=None, meta, metrics=None, force=False):
        """Save a step asynchronously. ``meta`` is a JSON-able dict (the caller's config, data position...).

        ``optimizer=None`` saves an inference-only checkpoint (model and meta; ``load`` and ``restore`` of the
        model work, resuming training from it does not). Returns False when the step already exists (Orbax
        never overwrites).
        """
        self._manager.wait_until_finished()
        meta = {"format": FORMAT, "step": int(step), **meta, "has_optimizer": optimizer is not None}
        items = {"model": ocp.args.StandardSave(nnx.state(model)), "meta": ocp.args.JsonSave(meta)}
        if optimizer is not None:
            items["optimizer"] = ocp.args.StandardSave(nnx.state(optimizer))
        args = ocp.args.Composite(**items)
        if metrics is not None:
            metrics = {k: float(v) for k, v in metrics.items()}
        return self._manager.save(int(step), args=args, metrics=metrics, force=force)

    def read_meta(self, step=None):
        """The JSON ``meta`` item of ``step`` (default latest)."""
        step = self._resolve(step)
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as exc:  # noqa: BLE001 - any Orbax failure means an unreadable checkpoint
            raise CheckpointError(f"cannot read {self.directory}/{step}/meta: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{self.directory}/{step} was not written by AlgoRNN (meta format "
                f"{meta.get('format') if isinstance(meta, dict) else meta!r}, expected {FORMAT!r})"
            )
        return meta

    def restore(self, step=None, *, model, optimizer=None, mesh=None):
        """Restore ``step`` (default latest) into ``model`` (and ``optimizer``) in place; returns the meta dict.

        ``model``/``optimizer`` may be concrete or ``nnx.eval_shape`` objects: only their structure, shapes
        and dtypes are used; the arrays are placed replicated over ``mesh`` (or on one device).
        """
        step = self._resolve(step)
        meta = self.read_meta(step)
        items = {"model": ocp.args.StandardRestore(_abstract_target(nnx.state(model), mesh))}
        if optimizer is not None and not os.path.isdir(os.path.join(self.directory, str(step), "optimizer")):
            raise CheckpointError(
                f"{self.directory}/{step} is an inference-only checkpoint (saved without "
                "optimizer state): restore the model alone (optimizer=None), or train anew"
            )
        if optimizer is not None:
            items["optimizer"] = ocp.args.StandardRestore(_abstract_target(nnx.state(optimizer), mesh))
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"cannot restore {self.directory}/{step}: {type(exc).__name__}: {exc}") from exc
        nnx.update(model, restored["model"])
        if optimizer is not None:
            nnx.update(optimizer, restored["optimizer"])
        return meta

    def resolve_step(self, step=None) -> int:
        """The step number for ``step`` = None / "latest" / "best" / a number; CheckpointError if absent."""
        return self._resolve(step)

    def _resolve(self, step):
        if step is None or step == "latest":
            step = self.latest_step()
        elif step == "best":
            step = self.best_step()
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {self.directory} (expected {_EXPECTED})")
        if int(step) not in _step_dirs(self.directory):
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; have {self.all_steps()}")
        return int(step)

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def find_checkpoint_dir(path):
    """``path`` itself, or ``path/checkpoints`` when ``path`` is a training workdir."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is not a directory (expected a checkpoint directory or a training workdir)")
    sub = os.path.join(path, "checkpoints")
    if not _step_dirs(path) and os.path.isdir(sub):
        return sub
    return path


# Checkpoints written before the ``algornn`` namespace (version 0.1) name their builder by its old
# top-level module path, e.g. ``experiments._models:model_from_config``.
_LEGACY_TOP_LEVEL = ("scan_kernels", "ssm", "layers", "experiments", "checkpoints")


def _import_builder(spec):
    module, _, name = spec.partition(":")
    if module.split(".")[0] in _LEGACY_TOP_LEVEL:
        module = "algornn." + module
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint names model builder {spec!r}, which cannot be imported: {exc}") from exc


def load(directory, step="best", *, mesh=None):
    """Rebuild the model from a checkpoint alone: ``(model, config)``.

    ``directory`` is a checkpoint directory or a training workdir. ``step`` is ``"best"`` (default),
    ``"latest"`` or a step number. The model is built abstractly by the builder named in the checkpoint
    (``meta["builder"]``, ``"module:function"`` taking ``(config_dict, model_spec)`` and returning
    ``(model, config)``), then filled with the stored state; it is returned in eval mode.
    """
    directory = find_checkpoint_dir(directory)
    manager = CheckpointManager(directory, create=False)
    try:
        meta = manager.read_meta(manager._resolve(step))
        for key in ("builder", "config", "model_spec"):
            if key not in meta:
                raise CheckpointError(f"{directory}: checkpoint meta has no {key!r} (keys: {sorted(meta)})")
        builder = _import_builder(meta["builder"])
        config = None

        def build():
            nonlocal config
            model, config = builder(meta["config"], meta["model_spec"])
            return model

        model = nnx.eval_shape(build)
        manager.restore(meta["step"], model=model, mesh=mesh)
    finally:
        manager.close()
    if hasattr(model, "eval"):
        model.eval()
    return model, config
