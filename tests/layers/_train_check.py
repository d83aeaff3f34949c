"""A few Adam steps of a ``SequenceModel`` on a tiny synthetic recall task (shared by the Mamba2 / Hawk tests)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from algornn import layers


def recall_batch(seed=0, batch=8, length=24, vocab=6):
    """Per-position labels: the token two steps back (needs memory across tokens); no label at t < 2 (-> 0)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab, size=(batch, length))
    y = np.zeros_like(x)
    y[:, 2:] = x[:, :-2]
    return jnp.asarray(x, jnp.int32), jnp.asarray(y, jnp.int32)


def train_steps(mixer: str, mixer_options: dict, steps: int = 4):
    """Losses of ``steps`` Adam updates and the fraction of parameter arrays that changed."""
    vocab = 6
    model = layers.SequenceModel(
        d_model=8,
        n_layers=1,
        num_classes=vocab,
        mixer=mixer,
        mixer_options=mixer_options,
        vocab_size=vocab,
        pooling="none",
        rngs=nnx.Rngs(0),
    )
    x, y = recall_batch(vocab=vocab)
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))]

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @nnx.jit
    def step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(steps)]
    after = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))]
    moved = np.mean([not np.array_equal(a, b) for a, b in zip(after, before)])
    return losses, moved
