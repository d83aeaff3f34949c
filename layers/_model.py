"""``SequenceModel``: encoder → n × ``SequenceBlock`` → [final norm] → pooling → linear decoder.

Encoder: a token embedding (``vocab_size``; id 0 is padding and embeds to zero) or a linear map of float features
(``input_dim``). Pooling over the valid prefix of each sequence (``lengths (B,)``, suffix padding):
``"mean"`` (masked mean), ``"last"`` (position ``lengths[b] - 1``) or ``"none"`` (every position).

Shapes: ``x`` int ``(B, L)`` or float ``(B, L, input_dim)``; logits ``(B, num_classes)`` or
``(B, L, num_classes)`` for ``pooling="none"``. Autoregressive use: ``init_state(B)`` and
``step(state, x_t) -> (state, logits_t (B, num_classes))`` with ``x_t`` int ``(B,)`` or float ``(B, input_dim)``.
Train/eval mode (Dropout, BatchNorm) is switched by ``model.train()`` / ``model.eval()``.
"""

import jax.numpy as jnp
from flax import nnx

from algornn.layers._block import SequenceBlock, make_norm
from algornn.layers._options import check_bool, check_choice, check_int

POOLINGS = ("mean", "last", "none")


class SequenceModel(nnx.Module):
    """A stack of residual sequence blocks for classification and autoregressive generation."""

    def __init__(self, *, d_model: int, n_layers: int, num_classes: int, mixer, mixer_options=None,
                 vocab_size=None, input_dim=None, pooling: str = "mean", norm: str = "layer",
                 prenorm: bool = True, dropout: float = 0.0, ff: str = "glu", rngs: nnx.Rngs):
        check_int("d_model", d_model)
        check_int("n_layers", n_layers)
        check_int("num_classes", num_classes)
        check_choice("pooling", pooling, POOLINGS)
        check_bool("prenorm", prenorm)
        if (vocab_size is None) == (input_dim is None):
            raise ValueError(f"give exactly one of vocab_size (tokens) or input_dim (features); "
                             f"got vocab_size={vocab_size!r}, input_dim={input_dim!r}")
        if vocab_size is not None:
            check_int("vocab_size", vocab_size, minimum=2)
            self.encoder = nnx.Embed(vocab_size, d_model, rngs=rngs)
        else:
            check_int("input_dim", input_dim)
            self.encoder = nnx.Linear(input_dim, d_model, rngs=rngs)
        self.vocab_size = vocab_size
        self.input_dim = input_dim
        self.d_model = d_model
        self.pooling = pooling
        self.prenorm = prenorm
        self.blocks = nnx.List([
            SequenceBlock(d_model, mixer, mixer_options=mixer_options, norm=norm, prenorm=prenorm,
                          dropout=dropout, ff=ff, rngs=rngs)
            for _ in range(n_layers)
        ])
        self.final_norm = make_norm(norm, d_model, rngs) if prenorm else None
        self.decoder = nnx.Linear(d_model, num_classes, rngs=rngs)

    # -- input checks -------------------------------------------------------------------------------------
    def _check_x(self, x, *, step: bool):
        shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
        what = "x_t" if step else "x"
        if self.vocab_size is not None:
            want = "(B,)" if step else "(B, L)"
            if shape is None or len(shape) != (1 if step else 2) or not jnp.issubdtype(dtype, jnp.integer):
                raise ValueError(f"SequenceModel: {what} must be integer tokens {want}; got shape {shape}, "
                                 f"dtype {dtype}")
        else:
            want = f"(B, {self.input_dim})" if step else f"(B, L, {self.input_dim})"
            if (shape is None or len(shape) != (2 if step else 3) or shape[-1] != self.input_dim
                    or not jnp.issubdtype(dtype, jnp.floating)):
                raise ValueError(f"SequenceModel: {what} must be float features {want}; got shape {shape}, "
                                 f"dtype {dtype}")

    def _embed(self, x):
        if self.vocab_size is not None:
            return self.encoder(x) * (x != 0)[..., None].astype(jnp.float32)   # padding id 0 -> 0
        return self.encoder(x.astype(jnp.float32))

    # -- sequence mode ----------------------------------------------------------------------------------
    def features(self, x, lengths=None):
        """Per-position features ``(B, L, d_model)`` after the last block (and final norm)."""
        self._check_x(x, step=False)
        batch, length = x.shape[0], x.shape[1]
        mask = None
        if lengths is not None:
            lengths = jnp.asarray(lengths)
            if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
                raise ValueError(f"SequenceModel: lengths must be integers of shape (B,)=({batch},); "
                                 f"got shape {lengths.shape}, dtype {lengths.dtype}")
            mask = (jnp.arange(length)[None, :] < lengths[:, None]).astype(jnp.float32)   # (B, L)
        h = self._embed(x)
        for block in self.blocks:
            h = block(h, mask)
        if self.final_norm is not None:
            h = self.final_norm(h)
        return h, mask

    def encode(self, x, lengths=None):
        """Pooled features ``(B, d_model)`` (``(B, L, d_model)`` for ``pooling="none"``) before the decoder."""
        h, mask = self.features(x, lengths)
        length = h.shape[1]
        if self.pooling == "none":
            return h
        if self.pooling == "mean":
            if mask is None:
                return jnp.mean(h, axis=1)
            count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)                    # (B, 1)
            return jnp.sum(h * mask[..., None], axis=1) / count
        last = (jnp.full((h.shape[0],), length - 1) if lengths is None
                else jnp.clip(jnp.asarray(lengths) - 1, 0, length - 1))
        return jnp.take_along_axis(h, last[:, None, None].astype(jnp.int32), axis=1)[:, 0]

    def __call__(self, x, lengths=None):
        """Logits ``(B, num_classes)`` (``(B, L, num_classes)`` for ``pooling="none"``)."""
        return self.decoder(self.encode(x, lengths))

    # -- recurrent mode ---------------------------------------------------------------------------------
    def init_state(self, batch_size: int):
        return tuple(block.init_state(batch_size) for block in self.blocks)

    def step(self, state, x_t):
        """One token ``x_t`` (int ``(B,)`` or float ``(B, input_dim)``) -> ``(state, logits_t (B, num_classes))``."""
        self._check_x(x_t, step=True)
        h = self._embed(x_t)
        new_state = []
        for block, s in zip(self.blocks, state):
            s, h = block.step(s, h)
            new_state.append(s)
        if self.final_norm is not None:
            h = self.final_norm(h)
        return tuple(new_state), self.decoder(h)
