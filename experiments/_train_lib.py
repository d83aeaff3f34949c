"""Training pieces: optimizer, schedules, jitted train/eval steps, data streams and evaluation.

Optimizer (docs/experiments.md §Optimizer): AdamW for ordinary matrices, Adam without weight decay for vectors (biases,
norm scales) and, with their own learning rate, for the ``ssm``-tagged parameters (Δ, A/Λ, B); both
learning rates follow linear warmup then cosine decay to ``end_lr_ratio`` x peak; the global gradient
norm is clipped first. Gradient accumulation averages ``accumulate`` micro-batches inside one jitted
step: the loss is a sum over scored positions divided by the total count over all micro-batches, so
``accumulate=k`` with batch B equals one batch of kB exactly (up to float summation order).

Data parallel: parameters and optimizer state replicated over a 1-D mesh with axis ``"data"``,
batches sharded along B; XLA inserts the gradient all-reduce. With several processes (``jax.distributed``,
``experiments.distributed``) the mesh spans every process's devices, ordered by process, and each process
hands over only its own rows of a global batch (``shard_batch``); see docs/distributed.md.
Sequence parallel (``train.sequence_parallel`` = N):
a 2-D mesh ``("data", "seq")``, batches also split along L over ``"seq"``, and the mixers' scans run through
``scan_kernels.sequence_parallel`` under ``mesh_context``.

Shapes: B batch, L length, k micro-batches per step.
"""

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from algornn.experiments._models import apply_model, param_groups
from algornn.experiments.tasks import packing

_BATCH_KEYS = ("inputs", "labels", "lengths", "inputs2", "lengths2", "dt", "segment_ids")

# ----------------------------------------------------------------------------------------------------
# optimizer


def make_schedule(peak: float, optim, total_steps: int):
    """Linear warmup over ``optim.warmup_steps`` to ``peak``, then cosine (or constant) to the end."""
    warmup = int(optim.warmup_steps)
    decay_steps = max(int(total_steps) - warmup, 1)
    end = float(optim.end_lr_ratio)
    cosine = optim.schedule == "cosine"

    def schedule(count):
        step = jnp.asarray(count, jnp.float32)
        warm = jnp.minimum((step + 1.0) / float(max(warmup, 1)), 1.0)
        progress = jnp.clip((step - float(warmup)) / float(decay_steps), 0.0, 1.0)
        decay = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress)) if cosine else jnp.ones_like(step)
        return peak * jnp.where(step < float(warmup), warm, decay)

    return schedule


def make_optimizer(model, optim, total_steps: int) -> nnx.Optimizer:
    """``nnx.Optimizer`` over ``nnx.Param`` with the ssm / decay / no_decay groups of ``param_groups``."""
    lr = make_schedule(optim.lr, optim, total_steps)
    ssm_lr = make_schedule(optim.ssm_lr, optim, total_steps)
    transforms = {
        "ssm": optax.adam(ssm_lr, b1=optim.b1, b2=optim.b2),
        "decay": optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay),
        "no_decay": optax.adam(lr, b1=optim.b1, b2=optim.b2),
    }
    tx = optax.multi_transform(transforms, param_groups(model))
    if optim.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


# ----------------------------------------------------------------------------------------------------
# loss and steps


def _bf16_model(model):
    """A view of ``model`` whose non-SSM float parameters are bfloat16 (SSM parameters stay float32)."""
    from algornn.layers import is_ssm_param  # the one reader of the SSM tag

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def cast(v):
        if is_ssm_param(v) or not jnp.issubdtype(v.get_value().dtype, jnp.floating):
            return v
        return v.replace(v.get_value().astype(jnp.bfloat16))

    params = jax.tree.map(cast, params, is_leaf=lambda v: isinstance(v, nnx.Variable))
    return nnx.merge(graphdef, params, rest)


REGRESSION_TOLERANCE = 0.04  # adding problem: an answer counts as correct when |error| < 0.04


def loss_terms(model, batch, *, kind: str, bf16: bool):
    """(summed loss, (correct, count)) over the scored entries of ``batch``.

    ``kind`` is the task kind: "classification" (labels (B,), cross-entropy), "sequence_labels" (labels
    (B, L), entries < 0 not scored) or "regression" (labels (B,) float, squared error; "correct" means
    ``|error| < REGRESSION_TOLERANCE``). ``batch["weight"]`` (B,) is 1 for real rows, 0 for padding rows.
    """
    if bf16:
        model = _bf16_model(model)
        batch = {
            k: (v.astype(jnp.bfloat16) if jnp.issubdtype(v.dtype, jnp.floating) and k.startswith("inputs") else v)
            for k, v in batch.items()
        }
    logits = apply_model(model, batch).astype(jnp.float32)  # (B, C) or (B, L, C)
    labels = batch["labels"]
    weight = batch["weight"]
    if kind == "regression":
        err = logits[:, 0] - labels  # (B,)
        correct = (jnp.abs(err) < REGRESSION_TOLERANCE).astype(jnp.float32)
        return jnp.sum(err * err * weight), (jnp.sum(correct * weight), jnp.sum(weight))
    # (B,) one label per row, (B, L) per position, or (B, S) one per packed sequence (train.pack)
    mask = (labels >= 0).astype(jnp.float32) * weight.reshape(weight.shape + (1,) * (labels.ndim - 1))
    safe = jnp.where(labels >= 0, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    correct = (jnp.argmax(logits, axis=-1) == safe).astype(jnp.float32)
    return jnp.sum(ce * mask), (jnp.sum(correct * mask), jnp.sum(mask))


@nnx.jit(static_argnames=("kind", "bf16", "accumulate", "seed"))
def train_step(model, optimizer, batches, step, *, kind, bf16, accumulate, seed):
    """One optimizer update from ``accumulate`` micro-batches (leaves shaped (k, B, ...)).

    Dropout keys are ``fold_in(key(seed), step)``, so a resumed run draws the same masks.
    Returns (mean loss, accuracy, global gradient norm) as float32 scalars.
    """
    nnx.reseed(model, dropout=jax.random.fold_in(jax.random.key(seed), step))

    def loss_fn(m, mb):
        return loss_terms(m, mb, kind=kind, bf16=bf16)

    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    loss_sum, correct, count, grads = 0.0, 0.0, 0.0, None
    for i in range(accumulate):  # unrolled: k is small; keeps the model state updates simple
        mb = jax.tree.map(lambda x, i=i: x[i], batches)
        (ls, (c, n)), g = grad_fn(model, mb)
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        loss_sum, correct, count = loss_sum + ls, correct + c, count + n
    count = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    optimizer.update(model, grads)
    return loss_sum / count, correct / count, optax.tree.norm(grads)


@nnx.jit(static_argnames=("kind", "bf16"))
def eval_step(model, batch, *, kind, bf16):
    """(summed loss, correct, count) for one evaluation batch."""
    loss_sum, (correct, count) = loss_terms(model, batch, kind=kind, bf16=bf16)
    return loss_sum, correct, count


# ----------------------------------------------------------------------------------------------------
# devices and data


def make_mesh(devices: int = 0, sequence: int = 1):
    """1-D mesh named ``"data"`` over the first ``devices`` devices (0 = all); with ``sequence`` > 1 the 2-D mesh
    ``("data", "seq")`` of shape ``(devices / sequence, sequence)`` (batches over ``"data"``, time over ``"seq"``).

    With several processes the mesh holds every device of every process (``devices`` must be 0 or that
    count), ordered by process, so process i's devices hold rows ``[i·B/N, (i+1)·B/N)`` of a global batch
    (sequence parallelism is single-process for now).
    """
    available = jax.devices()
    n = devices or len(available)
    if n > len(available):
        raise ValueError(f"train.devices: asked for {n} devices, only {len(available)} available")
    if jax.process_count() > 1:
        if sequence != 1:
            raise ValueError(
                f"train.sequence_parallel: {sequence} with {jax.process_count()} processes is not supported; "
                "sequence parallelism runs in one process (set train.sequence_parallel=1)"
            )
        if n != len(available):
            raise ValueError(
                f"train.devices: a run over {jax.process_count()} processes uses all their {len(available)} "
                f"devices; got {n} (set 0, or fewer devices per process through the launcher)"
            )
        per_process = {}
        for d in available:
            per_process[d.process_index] = per_process.get(d.process_index, 0) + 1
        if len(set(per_process.values())) > 1:
            raise ValueError(
                "every process must hold the same number of devices (each feeds an equal share of the batch); "
                f"got devices per process {dict(sorted(per_process.items()))}"
            )
        ordered = sorted(available, key=lambda d: (d.process_index, d.id))
        return jax.sharding.Mesh(np.asarray(ordered), ("data",), axis_types=(AxisType.Auto,))
    if sequence == 1:
        return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=available[:n])
    if n % sequence:
        raise ValueError(
            f"train.sequence_parallel: {sequence} does not divide the {n} devices; use a divisor of {n} "
            "(or set train.devices)"
        )
    return jax.make_mesh(
        (n // sequence, sequence), ("data", "seq"), axis_types=(AxisType.Auto,) * 2, devices=available[:n]
    )


def mesh_context(mesh):
    """``jax.set_mesh(mesh)`` for a mesh with a ``"seq"`` axis (the mixers' ``sequence_parallel`` reads the mesh
    while tracing), else a no-op context."""
    return jax.set_mesh(mesh) if "seq" in mesh.axis_names else contextlib.nullcontext()


def _global_replica(x, sharding):
    """A global array replicated over ``sharding`` from the same host value in every process."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # RNG streams: place the raw key data
        return jax.random.wrap_key_data(_global_replica(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(obj, mesh):
    """Place every array of an NNX object replicated over ``mesh`` (in place).

    With several processes each one built ``obj`` from the same seed; one all-gather of a checksum per call
    verifies that (``ValueError`` otherwise), then every process places its own copy on its devices.
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    state = nnx.state(obj)
    if jax.process_count() == 1:
        nnx.update(obj, jax.device_put(state, sharding))
        return
    from jax.experimental import multihost_utils

    def checksum(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return float(np.sum(np.asarray(x, np.float64)))

    sums = np.asarray([checksum(x) for x in jax.tree.leaves(state)], np.float32)  # float32: x64 is off
    gathered = np.asarray(multihost_utils.process_allgather(sums))  # (processes, leaves)
    differ = [i for i in range(gathered.shape[0]) if not np.array_equal(gathered[i], gathered[0])]
    if differ:
        raise ValueError(
            f"processes {differ} built another initial {type(obj).__name__} than process 0 (checksums of "
            f"{sums.size} arrays differ); every process must run the same config and seed"
        )
    nnx.update(obj, jax.tree.map(lambda x: _global_replica(x, sharding), state))


def shard_batch(batch: dict, mesh, *, axis: int = 0):
    """Global arrays from this process's rows of a batch, the batch axis (``axis``) split over ``"data"``; on a
    mesh with a ``"seq"`` axis, arrays with a time axis (``axis + 1``: inputs, ``dt``, per-position labels) are
    split over it too.

    One process: ``batch`` is the whole batch. N processes: ``batch`` holds this process's ``B/N`` rows
    (``Task.batches(shard=(i, N))``) and the result is the global batch of B rows.
    """
    seq = mesh.shape["seq"] if "seq" in mesh.axis_names else 1
    count = jax.process_count()

    def place(x):
        timed = seq > 1 and x.ndim > axis + 1 and x.shape[axis + 1] % seq == 0
        sharding = NamedSharding(mesh, PartitionSpec(*([None] * axis), "data", *(("seq",) if timed else ())))
        shape = x.shape[:axis] + (x.shape[axis] * count,) + x.shape[axis + 1 :]
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return jax.tree.map(place, batch)


def clean_batch(raw: dict, *, rows: int | None = None) -> dict:
    """Keep the model/label keys and turn the task's ``mask`` (B,) into a float ``weight``.

    Padding rows (mask False) get length >= 1 so masked pooling never divides by zero; with ``rows`` the
    batch is padded further to that many rows with zero-weight copies of row 0.
    """
    batch = {k: np.asarray(raw[k]) for k in _BATCH_KEYS if k in raw}
    for k in ("inputs", "labels"):
        if k not in batch:
            raise ValueError(f"task batch is missing {k!r}; got keys {sorted(raw)}")
    b = batch["labels"].shape[0]
    mask = np.asarray(raw["mask"], bool) if "mask" in raw else np.ones((b,), bool)
    batch["weight"] = mask.astype(np.float32)
    for k in ("lengths", "lengths2"):
        if k in batch:
            batch[k] = np.where(mask, batch[k], np.maximum(batch[k], 1)).astype(np.int32)
    if rows is not None and rows > b:
        pad = rows - b
        batch = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)], axis=0) for k, v in batch.items()}
        batch["weight"][b:] = 0.0
    return batch


def check_batch(batch: dict, *, vocab_size: int | None, where: str) -> None:
    """Refuse a host batch the model would silently mis-read: ``ValueError`` naming the bad values.

    Token ids (``inputs``/``inputs2`` of a token task, (B, L)) must lie in ``[0, vocab_size)``; ``lengths``/
    ``lengths2`` (B,) in ``[1, L]``; elapsed times ``dt`` (irregularly sampled tasks) must be (B, L), finite and
    > 0. One min/max per array on the numpy batch, before it goes to the devices.
    """
    if "dt" in batch:
        dt, x = batch["dt"], batch["inputs"]
        if dt.shape != x.shape[:2]:
            raise ValueError(f"{where}: dt must have shape (B, L) = {x.shape[:2]} like inputs; got {dt.shape}")
        if not (np.all(np.isfinite(dt)) and float(dt.min()) > 0):
            bad = np.unique(dt[~(np.isfinite(dt) & (dt > 0))])
            raise ValueError(f"{where}: dt holds value(s) {bad[:8].tolist()}; elapsed times must be finite and > 0")
    for x_key, n_key in (("inputs", "lengths"), ("inputs2", "lengths2")):
        if x_key not in batch:
            continue
        x = batch[x_key]
        if vocab_size is not None:
            if not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"{where}: {x_key} must hold integer token ids, got dtype {x.dtype}")
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= vocab_size:
                bad = np.unique(x[(x < 0) | (x >= vocab_size)])
                raise ValueError(
                    f"{where}: {x_key} holds token id(s) {bad[:8].tolist()} outside [0, vocab_size="
                    f"{vocab_size}) (min {lo}, max {hi}, shape {x.shape})"
                )
        if n_key in batch:
            n, length = batch[n_key], x.shape[1]
            if int(n.min()) < 1 or int(n.max()) > length:
                bad = np.unique(n[(n < 1) | (n > length)])
                raise ValueError(
                    f"{where}: {n_key} holds value(s) {bad[:8].tolist()} outside [1, L={length}] (shape {n.shape})"
                )


class DataStream:
    """Endless training batches from ``task.batches``, resumable at ``(epoch, step_in_epoch)``.

    ``batch_size`` is the global batch; each batch holds this process's rows of it (``shard``, default
    ``(jax.process_index(), jax.process_count())``; all rows in a single process).
    """

    def __init__(
        self, task, batch_size: int, *, seed: int, epoch: int = 0, step_in_epoch: int = 0, shard=None, pack=None
    ):
        """``pack``: None (one example per row) or ``max_segments`` of first-fit packed rows (``packing``)."""
        self.task, self.batch_size, self.seed, self.pack = task, batch_size, seed, pack
        self.shard = (jax.process_index(), jax.process_count()) if shard is None else tuple(shard)
        self.epoch, self.step_in_epoch = epoch, step_in_epoch
        self._it = None

    @property
    def position(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch}

    def next(self) -> dict:
        for _ in range(2):
            if self._it is None:
                where = dict(seed=self.seed, epoch=self.epoch, start_step=self.step_in_epoch, shard=self.shard)
                if self.pack is None:
                    batches = self.task.batches("train", self.batch_size, **where)
                else:
                    batches = packing.packed_batches(
                        self.task, "train", self.batch_size, max_segments=self.pack, **where
                    )
                self._it = iter(batches)
            try:
                raw = next(self._it)
            except StopIteration:
                self._it, self.epoch, self.step_in_epoch = None, self.epoch + 1, 0
                continue
            self.step_in_epoch += 1
            batch = clean_batch(raw)
            check_batch(
                batch,
                vocab_size=self.task.vocab_size,
                where=f"task {self.task.name!r} train batch (epoch {self.epoch}, step {self.step_in_epoch})",
            )
            return batch
        raise ValueError(
            f"task {self.task.name!r} yields no training batch of size {self.batch_size} "
            f"({self.task.num_examples('train')} training examples); lower train.batch_size"
        )


def evaluate(
    model,
    task,
    split: str,
    *,
    batch_size: int,
    mesh,
    kind: str,
    bf16: bool = False,
    max_batches: int = 0,
    seed: int = 0,
) -> dict:
    """Mean loss and accuracy over ``split`` (the first ``max_batches`` batches when > 0).

    Each batch of ``batch_size`` examples is padded with zero-weight rows to a multiple of the mesh's devices;
    with N processes each process then keeps its ``1/N`` of the rows, so the batches, and the sums, are the
    same for any number of processes.
    """
    n = mesh.devices.size
    rows = -(-batch_size // n) * n
    index, count_p = jax.process_index(), jax.process_count()
    per = rows // count_p
    # every process reads its own rows when the batch needs no padding rows; else it pads the whole batch
    # (host arrays only) and keeps its slice, so the examples per batch never depend on the process count
    shard = (index, count_p) if rows == batch_size else (0, 1)
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    try:
        for i, raw in enumerate(task.batches(split, batch_size, seed=seed, shard=shard)):
            if max_batches and i >= max_batches:
                break
            if shard[1] == 1:
                batch = clean_batch(raw, rows=rows)
                batch = {k: v[index * per : (index + 1) * per] for k, v in batch.items()}
            else:
                batch = clean_batch(raw)
            check_batch(batch, vocab_size=task.vocab_size, where=f"task {task.name!r} {split} batch {i}")
            batch = shard_batch(batch, mesh)
            ls, c, k = eval_step(model, batch, kind=kind, bf16=bf16)
            loss_sum, correct, count = loss_sum + float(ls), correct + float(c), count + float(k)
    finally:
        model.train()
    if count == 0:
        raise ValueError(f"split {split!r} of task {task.name!r} produced no examples to evaluate")
    return {"loss": loss_sum / count, "accuracy": correct / count, "count": count}
