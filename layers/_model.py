"""``SequenceModel``: encoder → n × ``SequenceBlock`` → [final norm] → pooling → linear decoder.

Encoder: a token embedding (``vocab_size``; id 0 is padding and embeds to zero) or a linear map of float features
(``input_dim``). Pooling over the valid prefix of each sequence (``lengths (B,)``, suffix padding):
``"mean"`` (masked mean), ``"last"`` (position ``lengths[b] - 1``) or ``"none"`` (every position).

Valid lengths. With ``lengths`` given they are used as they are. Without them, token input infers each
sequence's length from its trailing padding: ``lengths[b] = 1 + (index of the last non-zero id)`` (at least 1).
This is exact under the contract that id 0 is padding only: a suffix-padded batch without ``lengths`` gives the
same logits as with them. Float features have no padding id: without ``lengths`` every position is valid.

Input checks. In eager calls, token ids outside ``[0, vocab_size)`` and ``lengths`` outside ``[1, L]`` raise
``ValueError`` naming the bad values. Under ``jit`` (traced values) they cannot be checked: an id outside
``[0, vocab_size)`` embeds to NaN, so the logits of that sequence are NaN (never a silently wrong number), and
``lengths`` are clipped to ``[1, L]``.

Shapes: ``x`` int ``(B, L)`` or float ``(B, L, input_dim)``; logits ``(B, num_classes)`` or
``(B, L, num_classes)`` for ``pooling="none"``, in ``dtype``. Autoregressive use: ``init_state(B)`` and
``step(state, x_t) -> (state, logits_t (B, num_classes))`` with ``x_t`` int ``(B,)`` or float ``(B, input_dim)``.
Train/eval mode (Dropout, BatchNorm) is switched by ``model.train()`` / ``model.eval()``.

Packed sequences: ``segment_ids (B, L)`` (keyword of ``__call__``, ``encode``, ``features``; int, 0 = padding, a change
of id starts a new sequence) puts several sequences in one row. Every block passes the ids to its mixer (a mixer
whose ``__call__`` does not take ``segment_ids`` raises ``ValueError``), so each sequence is computed as if alone,
and the pooling is per sequence: the pooled output is ``(B, S, ...)`` — logits ``(B, S, num_classes)`` — with the
sequences of each row numbered 0, 1, ... in order of appearance (padding excluded); S is ``num_segments`` (required
under ``jit``; by default the largest count of any row). Slots past a row's own count pool nothing: features 0,
logits the decoder's bias. ``lengths`` cannot be combined with ``segment_ids`` (padding is where the id is 0);
``pooling="none"`` returns per-position logits ``(B, L, num_classes)`` as usual. Exact isolation needs norms without
batch statistics in training mode (``norm="layer"``, or BatchNorm in eval mode) and no dropout noise.

Irregularly sampled sequences: ``dt (B, L)`` (``__call__``, ``encode``, ``features``; ``dt_t (B,)`` in ``step``)
holds the positive time before each sample in grid steps and goes to every block's continuous-time mixer
(Δ_t = dt_t × its learned step); a discrete-time mixer raises ``ValueError``. Padded positions need a valid
(positive) ``dt`` too; their inputs are zeroed as usual.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from algornn.layers._block import SequenceBlock, make_norm
from algornn.layers._options import (
    check_bool,
    check_choice,
    check_dt,
    check_dtypes,
    check_int,
    check_segment_ids,
    is_concrete,
)
from algornn.scan_kernels._common.packing import sequence_index

POOLINGS = ("mean", "last", "none")


def _first_bad(values: np.ndarray, bad: np.ndarray, limit: int = 5) -> str:
    """``"value at index, ..."`` for the first ``limit`` positions where ``bad`` holds."""
    where = np.argwhere(bad)[:limit]
    shown = ", ".join(f"{values[tuple(i)]} at {tuple(int(j) for j in i)}" for i in where)
    more = f" (and {int(bad.sum()) - len(where)} more)" if bad.sum() > len(where) else ""
    return shown + more


class SequenceModel(nnx.Module):
    """A stack of residual sequence blocks for classification and autoregressive generation.

    Args:
        d_model: channels D of every block.
        n_layers: number of blocks.
        num_classes: size of the decoder output.
        mixer: a name in ``algornn.layers.MIXERS`` or a mixer class.
        mixer_options: keyword options of the mixer (see its class docstring); unknown names raise ``ValueError``.
        vocab_size: token input with ids in ``[0, vocab_size)``, 0 = padding (give this or ``input_dim``).
        input_dim: float feature input of this size (give this or ``vocab_size``).
        pooling: "mean", "last" or "none" (per-position logits).
        norm: "layer" or "batch".
        prenorm: pre-norm blocks plus a final norm (True) or post-norm blocks (False).
        dropout: dropout rate in [0, 1).
        ff: feed-forward of each block: "glu", "mlp" or "none".
        dtype: compute dtype of every layer (e.g. jnp.bfloat16); scans accumulate in float32, logits come in dtype.
        param_dtype: dtype the parameters are stored in (e.g. float32 with bfloat16 compute).
        rngs: ``nnx.Rngs`` for the initialisation and dropout.

    ``__call__(x, lengths=None, dt=None, *, segment_ids=None, num_segments=None)``: see the module docstring for how
    lengths are inferred, what is checked, what ``dt`` (per-step elapsed times, ``(B, L)``) does and how packed
    sequences (``segment_ids (B, L)``) are pooled into ``(B, S, ...)``.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_layers: int,
        num_classes: int,
        mixer,
        mixer_options=None,
        vocab_size=None,
        input_dim=None,
        pooling: str = "mean",
        norm: str = "layer",
        prenorm: bool = True,
        dropout: float = 0.0,
        ff: str = "glu",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        check_int("n_layers", n_layers)
        check_int("num_classes", num_classes)
        check_choice("pooling", pooling, POOLINGS)
        check_bool("prenorm", prenorm)
        self.dtype, self.param_dtype = check_dtypes("SequenceModel", dtype, param_dtype)
        lin = dict(dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
        if (vocab_size is None) == (input_dim is None):
            raise ValueError(
                f"give exactly one of vocab_size (tokens) or input_dim (features); "
                f"got vocab_size={vocab_size!r}, input_dim={input_dim!r}"
            )
        if vocab_size is not None:
            check_int("vocab_size", vocab_size, minimum=2)
            self.encoder = nnx.Embed(vocab_size, d_model, **lin)
        else:
            check_int("input_dim", input_dim)
            self.encoder = nnx.Linear(input_dim, d_model, **lin)
        self.vocab_size = vocab_size
        self.input_dim = input_dim
        self.d_model = d_model
        self.pooling = pooling
        self.prenorm = prenorm
        self.blocks = nnx.List(
            [
                SequenceBlock(
                    d_model,
                    mixer,
                    mixer_options=mixer_options,
                    norm=norm,
                    prenorm=prenorm,
                    dropout=dropout,
                    ff=ff,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    rngs=rngs,
                )
                for _ in range(n_layers)
            ]
        )
        self.final_norm = make_norm(norm, d_model, rngs, self.dtype, self.param_dtype) if prenorm else None
        self.decoder = nnx.Linear(d_model, num_classes, **lin)

    # -- input checks -------------------------------------------------------------------------------------
    def _check_x(self, x, *, step: bool):
        shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
        what = "x_t" if step else "x"
        if self.vocab_size is not None:
            want = "(B,)" if step else "(B, L)"
            if shape is None or len(shape) != (1 if step else 2) or not jnp.issubdtype(dtype, jnp.integer):
                raise ValueError(
                    f"SequenceModel: {what} must be integer tokens {want}; got shape {shape}, dtype {dtype}"
                )
            if is_concrete(x):
                ids = np.asarray(x)
                bad = (ids < 0) | (ids >= self.vocab_size)
                if bad.any():
                    raise ValueError(
                        f"SequenceModel: token ids in {what} must be in [0, vocab_size={self.vocab_size})"
                        f"; got {_first_bad(ids, bad)} (value at (batch, position))"
                    )
        else:
            want = f"(B, {self.input_dim})" if step else f"(B, L, {self.input_dim})"
            if (
                shape is None
                or len(shape) != (2 if step else 3)
                or shape[-1] != self.input_dim
                or not jnp.issubdtype(dtype, jnp.floating)
            ):
                raise ValueError(
                    f"SequenceModel: {what} must be float features {want}; got shape {shape}, dtype {dtype}"
                )

    def _lengths(self, x, lengths):
        """Valid lengths ``(B,)`` int32 (given, checked/clipped, or inferred from padding); None for features."""
        batch, length = x.shape[0], x.shape[1]
        if lengths is None:
            if self.vocab_size is None:
                return None
            position = jnp.arange(1, length + 1, dtype=jnp.int32)[None, :]
            return jnp.maximum(jnp.max(jnp.where(x != 0, position, 0), axis=1), 1).astype(jnp.int32)
        lengths = jnp.asarray(lengths)
        if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise ValueError(
                f"SequenceModel: lengths must be integers of shape (B,)=({batch},); "
                f"got shape {lengths.shape}, dtype {lengths.dtype}"
            )
        if is_concrete(lengths):
            values = np.asarray(lengths)
            bad = (values < 1) | (values > length)
            if bad.any():
                raise ValueError(
                    f"SequenceModel: lengths must be in [1, L={length}]; got "
                    f"{_first_bad(values, bad)} (value at (batch,))"
                )
        return jnp.clip(lengths, 1, length).astype(jnp.int32)

    def _embed(self, x):
        if self.vocab_size is not None:
            valid = (x >= 0) & (x < self.vocab_size)
            h = self.encoder(jnp.clip(x, 0, self.vocab_size - 1))
            h = h * (x != 0)[..., None].astype(h.dtype)  # padding id 0 -> 0
            return jnp.where(valid[..., None], h, jnp.asarray(jnp.nan, h.dtype))  # bad id -> NaN (jit)
        return self.encoder(x.astype(self.dtype))

    # -- sequence mode ----------------------------------------------------------------------------------
    def features(self, x, lengths=None, dt=None, *, segment_ids=None):
        """Per-position features ``(B, L, d_model)`` after the last block (and final norm), and the mask
        ``(B, L)`` of valid positions (None for float features without ``lengths``; ``segment_ids != 0`` for packed
        sequences)."""
        self._check_x(x, step=False)
        segment_ids = self._segment_ids(x, lengths, segment_ids)
        h, mask, _ = self._features(x, lengths, dt, segment_ids)
        return h, mask

    def _segment_ids(self, x, lengths, segment_ids):
        if segment_ids is None:
            return None
        if lengths is not None:
            raise ValueError(
                "SequenceModel: give lengths or segment_ids, not both (with packed sequences padding is where "
                "segment_ids is 0)"
            )
        return check_segment_ids("SequenceModel", segment_ids, x.shape[:2])

    def _features(self, x, lengths, dt=None, segment_ids=None):
        length = x.shape[1]
        lengths = None if segment_ids is not None else self._lengths(x, lengths)
        if dt is not None:
            dt = check_dt("SequenceModel", dt, x.shape[:2])
        mask = None
        if lengths is not None:
            mask = (jnp.arange(length)[None, :] < lengths[:, None]).astype(jnp.float32)  # (B, L)
        if segment_ids is not None:
            mask = (segment_ids != 0).astype(jnp.float32)
        h = self._embed(x)
        for block in self.blocks:
            h = block(h, mask, dt) if segment_ids is None else block(h, mask, dt, segment_ids=segment_ids)
        if self.final_norm is not None:
            h = self.final_norm(h)
        return h, mask, lengths

    def _pool_segments(self, h, segment_ids, num_segments):
        """Per-sequence pooling of packed rows: ``h (B, L, D) -> (B, S, D)``, sequences numbered by appearance."""
        index = sequence_index(segment_ids)  # (B, L): sequence of t in its row, −1 on padding
        most = None  # the most sequences any row holds, when the ids are concrete
        if is_concrete(segment_ids):
            ids = np.asarray(segment_ids)
            first = np.concatenate([np.ones_like(ids[:, :1], bool), ids[:, 1:] != ids[:, :-1]], axis=1)
            most = int(np.max(np.sum((ids != 0) & first, axis=1), initial=0))
        if num_segments is None:
            if most is None:
                raise ValueError(
                    "SequenceModel: num_segments (the number S of pooled sequences per row) must be given when "
                    "segment_ids is traced (under jit)"
                )
            num_segments = max(1, most)
        num_segments = check_int("num_segments", num_segments)
        if most is not None and most > num_segments:
            raise ValueError(
                f"SequenceModel: a row of segment_ids holds {most} sequences, more than num_segments={num_segments}"
            )
        member = jax.nn.one_hot(index, num_segments, dtype=jnp.float32)  # (B, L, S); padding rows are 0
        if self.pooling == "mean":
            sums = jnp.einsum("bls,bld->bsd", member, h.astype(jnp.float32))
            count = jnp.maximum(jnp.sum(member, axis=1), 1.0)[..., None]  # (B, S, 1)
            return (sums / count).astype(self.dtype)
        position = jnp.arange(h.shape[1], dtype=jnp.int32)[None, :, None]
        last = jnp.max(jnp.where(member > 0, position, -1), axis=1)  # (B, S): last position of each sequence
        out = jnp.take_along_axis(h, jnp.maximum(last, 0)[..., None], axis=1)  # (B, S, D)
        return jnp.where((last >= 0)[..., None], out, jnp.zeros((), out.dtype))

    def encode(self, x, lengths=None, dt=None, *, segment_ids=None, num_segments=None):
        """Pooled features ``(B, d_model)`` (``(B, L, d_model)`` for ``pooling="none"``; ``(B, S, d_model)`` per
        packed sequence with ``segment_ids``) before the decoder."""
        self._check_x(x, step=False)
        segment_ids = self._segment_ids(x, lengths, segment_ids)
        h, mask, lengths = self._features(x, lengths, dt, segment_ids)
        length = h.shape[1]
        if self.pooling == "none":
            return h
        if segment_ids is not None:
            return self._pool_segments(h, segment_ids, num_segments)
        if self.pooling == "mean":
            h32 = h.astype(jnp.float32)
            if mask is None:
                return jnp.mean(h32, axis=1).astype(self.dtype)
            count = jnp.sum(mask, axis=1, keepdims=True)  # (B, 1), >= 1
            return (jnp.sum(h32 * mask[..., None], axis=1) / count).astype(self.dtype)
        last = jnp.full((h.shape[0],), length - 1) if lengths is None else lengths - 1
        return jnp.take_along_axis(h, last[:, None, None].astype(jnp.int32), axis=1)[:, 0]

    def __call__(self, x, lengths=None, dt=None, *, segment_ids=None, num_segments=None):
        """Logits ``(B, num_classes)`` (``(B, L, num_classes)`` for ``pooling="none"``) in ``dtype``; ``dt (B, L)``:
        elapsed time before each sample (irregular sampling); ``segment_ids (B, L)``: packed sequences, logits
        ``(B, S, num_classes)`` per sequence, ``S = num_segments`` (module docstring)."""
        return self.decoder(self.encode(x, lengths, dt, segment_ids=segment_ids, num_segments=num_segments))

    # -- recurrent mode ---------------------------------------------------------------------------------
    def init_state(self, batch_size: int):
        return tuple(block.init_state(batch_size) for block in self.blocks)

    def step(self, state, x_t, dt_t=None):
        """One token ``x_t`` (int ``(B,)`` or float ``(B, input_dim)``) -> ``(state, logits_t (B, num_classes))``;
        ``dt_t (B,)``: elapsed time before this token (irregular sampling)."""
        self._check_x(x_t, step=True)
        if dt_t is not None:
            dt_t = check_dt("SequenceModel.step", dt_t, x_t.shape[:1], name="dt_t")
        if not isinstance(state, tuple) or len(state) != len(self.blocks):
            got = f"a tuple of {len(state)}" if isinstance(state, tuple) else type(state).__name__
            raise ValueError(
                f"SequenceModel.step: state must be the tuple of {len(self.blocks)} block states from "
                f"init_state; got {got}"
            )
        h = self._embed(x_t)
        new_state = []
        for block, s in zip(self.blocks, state):
            s, h = block.step(s, h, dt_t)
            new_state.append(s)
        if self.final_norm is not None:
            h = self.final_norm(h)
        return tuple(new_state), self.decoder(h)
