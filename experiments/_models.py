"""Models for experiments: ``layers.SequenceModel`` and the LRA retrieval dual encoder.

The model is fully determined by the config's ``model`` section plus a small *model spec* taken from
the task (``vocab_size`` | ``input_dim``, ``num_classes``, ``pair``, ``per_position``). Checkpoints
store both, so ``checkpoints.load`` rebuilds the model without touching the task's data
(``model_from_config`` is the builder it calls).

Shapes: B batch, L length, D model width (``d_model``).
"""

import inspect

import jax
import jax.numpy as jnp
from flax import nnx

from algornn.experiments.config import Config

# The builder a checkpoint records: a public name that stays stable when modules move.
BUILDER = "algornn.experiments:model_from_config"


def model_spec(task) -> dict:
    """The JSON-able facts about ``task`` that the model depends on."""
    return {
        "vocab_size": getattr(task, "vocab_size", None),
        "input_dim": getattr(task, "input_dim", None),
        "num_classes": int(task.num_classes),
        "pair": bool(getattr(task, "pair", False)),
        "per_position": bool(getattr(task, "per_position", False)),
        "seq_len": int(task.seq_len),
        "kind": str(getattr(task, "kind", "classification")),
    }


def resolve_pooling(config: Config, spec: dict) -> str:
    pooling = config.model.pooling
    if pooling == "auto":
        return "none" if spec["per_position"] else "mean"
    if spec["per_position"] and pooling != "none":
        raise ValueError(
            f"model.pooling: {pooling!r} gives one label per sequence, but task "
            f"{config.task.name!r} scores every position; use 'none' or 'auto'"
        )
    if not spec["per_position"] and pooling == "none":
        raise ValueError(
            f"model.pooling: 'none' gives per-position logits, but task {config.task.name!r} has "
            "one label per sequence; use 'mean', 'last' or 'auto'"
        )
    return pooling


class RetrievalModel(nnx.Module):
    """LRA retrieval (AAN) dual encoder: a shared encoder pools each document to ``(B, D)``, then
    ``[e1, e2, e1 * e2, e1 - e2]`` → Linear → GELU → Linear (the Nyströmformer / S4 retrieval head)."""

    def __init__(self, encoder, d_model: int, hidden: int, num_classes: int, *, rngs: nnx.Rngs):
        self.encoder = encoder
        self.hidden = nnx.Linear(4 * d_model, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x, lengths=None, x2=None, lengths2=None):
        if x2 is None:
            raise ValueError("RetrievalModel needs both documents: x2 (B, L) is missing")
        e1 = self.encoder.encode(x, lengths)  # (B, D)
        e2 = self.encoder.encode(x2, lengths2)  # (B, D)
        z = jnp.concatenate([e1, e2, e1 * e2, e1 - e2], axis=-1)  # (B, 4D)
        return self.out(jax.nn.gelu(self.hidden(z)))


def build_model(config: Config, spec: dict, *, rngs: nnx.Rngs):
    """The model for ``config`` and the task facts ``spec`` (see ``model_spec``)."""
    from algornn import layers  # heavy: imported only when a model is built

    m = config.model
    if not isinstance(m.mixer, str) or m.mixer not in layers.mixer_names():
        raise ValueError(f"model.mixer: {m.mixer!r} is not one of {sorted(layers.mixer_names())}")
    mixer_options = dict(m.mixer_options)
    if config.train.sequence_parallel > 1:  # the scans shard time over the mesh axis "seq" (_train_lib.make_mesh)
        shards = lambda cls: "sequence_axis" in inspect.signature(cls.__init__).parameters  # noqa: E731
        if not shards(layers.resolve_mixer(m.mixer)):
            with_option = sorted(n for n, c in layers.MIXERS.items() if shards(c))
            raise ValueError(
                f"train.sequence_parallel={config.train.sequence_parallel} needs a mixer whose scans can shard time "
                f"(a sequence_axis option): one of {with_option}; model.mixer={m.mixer!r} has none"
            )
        mixer_options["sequence_axis"] = "seq"
    encoder = layers.SequenceModel(
        d_model=m.d_model,
        n_layers=m.n_layers,
        num_classes=spec["num_classes"],
        mixer=m.mixer,
        mixer_options=mixer_options,
        vocab_size=spec["vocab_size"],
        input_dim=spec["input_dim"],
        pooling=resolve_pooling(config, spec),
        norm=m.norm,
        prenorm=m.prenorm,
        dropout=m.dropout,
        ff=m.ff,
        rngs=rngs,
    )
    if spec["pair"]:
        return RetrievalModel(encoder, m.d_model, m.retrieval_hidden, spec["num_classes"], rngs=rngs)
    return encoder


def model_from_config(config_dict: dict, spec: dict):
    """Checkpoint builder: ``(model, config)`` from a stored config dict and model spec."""
    config = Config.from_dict(config_dict)
    return build_model(config, spec, rngs=nnx.Rngs(params=config.train.seed, dropout=config.train.seed + 1)), config


def apply_model(model, batch: dict):
    """Logits for a batch dict (``inputs``, ``lengths``, ``dt`` (B, L) for irregularly sampled tasks, for
    pair tasks ``inputs2``, ``lengths2``, and for packed rows ``segment_ids`` (B, L) with labels (B, S))."""
    if isinstance(model, RetrievalModel):
        return model(batch["inputs"], batch.get("lengths"), batch["inputs2"], batch.get("lengths2"))
    if batch.get("segment_ids") is not None:  # packed rows (train.pack): per-sequence logits (B, S, C)
        if model.pooling == "none":
            return model(batch["inputs"], segment_ids=batch["segment_ids"])
        return model(batch["inputs"], segment_ids=batch["segment_ids"], num_segments=batch["labels"].shape[1])
    if batch.get("dt") is not None:
        return model(batch["inputs"], batch.get("lengths"), dt=batch["dt"])
    return model(batch["inputs"], batch.get("lengths"))


def param_groups(model) -> dict:
    """Static optimizer label tree over ``nnx.state(model, nnx.Param)``:

    ``"ssm"`` for parameters tagged ``nnx.Param(..., tag="ssm")`` (docs/layers.md §SSM parameter tagging),
    ``"decay"`` for other matrices (ndim >= 2; weight decay), ``"no_decay"`` for vectors (biases, norm scales,
    D skips).
    """
    from algornn.layers import is_ssm_param  # the one reader of the SSM tag

    def label(v):
        if is_ssm_param(v):
            return "ssm"
        return "decay" if jnp.ndim(v.get_value()) >= 2 else "no_decay"

    return jax.tree.map(label, nnx.state(model, nnx.Param), is_leaf=lambda v: isinstance(v, nnx.Variable))
