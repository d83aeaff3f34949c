"""Pallas kernel for the diagonal linear scan ``h_t = a_t ⊙ h_{t-1} + b_t`` on ``(B, L, D)`` arrays.

Layout (after recurrentgemma's and accelerated-scan's GPU scans, docs/backends.md §Pallas lowering): one program per
(batch row, block of ``block_d`` channels); the **time loop runs inside the kernel** (``fori_loop`` over rows
``ref[pl.ds(t, 1), :]``), vectorised across the channel block, carrying a compensated sum (``_common.numerics.two_sum``,
as in ``_linear_scan.xla``) so long sums stay accurate. ``reverse`` walks the rows backwards by index (Triton has
no ``rev``). Complex inputs travel as separate real/imaginary float planes (``pallas_call`` rejects complex),
multiplied with ``_common.numerics.cmul``.

Two-level variant for long L with few channels (too few programs to fill a GPU), chunk length C:
  1. per chunk, from a zero state: the chunk's product of decays ``P_k = Π a`` and end state ``e_k``;
  2. a scan over the ``L/C`` chunk summaries (``s_k = P_k s_{k-1} + e_k``, the same kernel) gives each
     chunk's incoming state;
  3. per chunk again, the full scan from its incoming state writes ``h``.
This reads ``a, b`` twice (5 passes over memory instead of 3) in exchange for ``B·D/block_d·L/C`` programs.

Tuning knobs live in :class:`PallasScanConfig`; the GPU lowering choice lives in ``_common.pallas_config``.

Shape legend: B batch · L length · D channels · C chunk.
"""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from algornn.scan_kernels._common import pallas_config as _pallas_config
from algornn.scan_kernels._common import utils as _utils
from algornn.scan_kernels._common.numerics import cmul, two_sum
from algornn.scan_kernels._common.validate import check_choice


@dataclasses.dataclass(frozen=True)
class PallasScanConfig:
    """Block sizes of the Pallas scan (static)."""

    block_d: int = 128  # channels per program; a power of two (Triton loads are power-of-two sized)
    chunk: int = 2048  # C, time steps per program in the two-level variant
    two_level: str = "auto"  # "auto" | "always" | "never"
    min_programs: int = 256  # "auto" goes two-level when B * ceil(D / block_d) < this and L >= 2 C
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self):
        for name in ("block_d", "chunk"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"PallasScanConfig.{name} must be a positive power of two, got {v!r}")
        check_choice("PallasScanConfig.two_level", self.two_level, ("auto", "always", "never"))


# ------------------------------------------------------------------------------------------ kernels
def _scan_kernel(*refs, planes: int, reverse: bool, summary: bool, shifted: bool):
    """One chunk ``(C, bd)`` of one batch row. Refs: a, b, h0 planes, then outputs.

    ``summary=False``: outputs ``h`` planes ``(C, bd)``, scanned from ``h0``.
    ``summary=True``: outputs end-state and decay-product planes ``(1, bd)``, scanned from zero.
    ``shifted=True``: step t uses the decay of the step visited before it (0 at the first step).
    """
    a_refs, b_refs, h0_refs = refs[:planes], refs[planes : 2 * planes], refs[2 * planes : 3 * planes]
    out_refs = refs[3 * planes :]
    C = a_refs[0].shape[0]

    def body(i, carry):
        h, c, p = carry  # state ≈ h + c (TwoSum compensation); p = running product of decays (summary)
        t = C - 1 - i if reverse else i
        if shifted:  # the backward pass's recurrence, without a shifted copy of a
            s = jnp.clip(t + 1 if reverse else t - 1, 0, C - 1)
            a_t = tuple(jnp.where(i == 0, 0.0, r[pl.ds(s, 1), :]).astype(r.dtype) for r in a_refs)
        else:
            a_t = tuple(r[pl.ds(t, 1), :] for r in a_refs)
        b_t = tuple(r[pl.ds(t, 1), :] for r in b_refs)
        y = tuple(u + v for u, v in zip(cmul(a_t, c), b_t))
        h, c = zip(*(two_sum(u, v) for u, v in zip(cmul(a_t, h), y)))
        if summary:
            p = cmul(a_t, p)
        else:
            for r, v in zip(out_refs, h):
                r[pl.ds(t, 1), :] = v
        return tuple(h), tuple(c), p

    zero = jnp.zeros(h0_refs[0].shape, h0_refs[0].dtype)  # (1, bd)
    if summary:
        h_init = (zero,) * planes
        p_init = (jnp.ones_like(zero),) + (zero,) * (planes - 1)
    else:
        h_init = tuple(r[...] for r in h0_refs)
        p_init = ()
    h, c, p = lax.fori_loop(0, C, body, (h_init, (zero,) * planes, p_init))
    if summary:
        e_refs, p_refs = out_refs[:planes], out_refs[planes:]
        for r, u, v in zip(e_refs, h, c):
            r[...] = u + v
        for r, v in zip(p_refs, p):
            r[...] = v


def _call(a, b, h0, *, reverse: bool, summary: bool, chunk: int, cfg: PallasScanConfig, interpret, shifted=False):
    """Run the kernel on planes ``a, b (B, Lp, Dp)`` and ``h0 (B, n, Dp)`` with ``n = Lp / chunk`` chunks."""
    planes = len(a)
    B, Lp, Dp = a[0].shape
    n, bd = Lp // chunk, cfg.block_d
    dtype = a[0].dtype
    grid = (B, Dp // bd, n)
    seq_spec = pl.BlockSpec((None, chunk, bd), lambda i, j, k: (i, k, j))
    # Reverse scans visit chunks last-to-first, but each chunk already has its own initial state, so the
    # grid order does not matter for correctness.
    row_spec = pl.BlockSpec((None, 1, bd), lambda i, j, k: (i, k, j))
    if summary:
        out_shape = tuple(jax.ShapeDtypeStruct((B, n, Dp), dtype) for _ in range(2 * planes))
        out_specs = (row_spec,) * (2 * planes)
    else:
        out_shape = tuple(jax.ShapeDtypeStruct((B, Lp, Dp), dtype) for _ in range(planes))
        out_specs = (seq_spec,) * planes
    kernel = partial(_scan_kernel, planes=planes, reverse=reverse, summary=summary, shifted=shifted)
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=[seq_spec] * (2 * planes) + [row_spec] * planes,
        out_specs=out_specs,
        name="linear_scan_summary" if summary else "linear_scan",
        **_pallas_config.pallas_call_kwargs(num_warps=cfg.num_warps, num_stages=cfg.num_stages, interpret=interpret),
    )(*a, *b, *h0)


# ------------------------------------------------------------------------------------------ wrapper
def _to_planes(x):
    return (jnp.real(x), jnp.imag(x)) if _utils.is_complex(x.dtype) else (x,)


def _pad(planes, widths, value):
    if all(w == (0, 0) for w in widths):
        return planes
    return tuple(jnp.pad(p, widths, constant_values=value if i == 0 else 0) for i, p in enumerate(planes))


def use_two_level(B: int, L: int, D: int, cfg: PallasScanConfig) -> bool:
    if cfg.two_level != "auto":
        return cfg.two_level == "always"
    return B * pl.cdiv(D, cfg.block_d) < cfg.min_programs and L >= 2 * cfg.chunk


def linear_scan_pallas(
    a, b, h0, *, reverse: bool = False, shifted: bool = False, config: PallasScanConfig | None = None, interpret=None
):
    """Pallas scan of ``a, b (B, L, D)`` from ``h0 (B, D)`` (all in one compute dtype); returns ``h (B, L, D)``.

    ``shifted``: see ``_linear_scan.op._dispatch``. ``interpret=None``: interpret mode off-GPU
    (``_common.pallas_config``).
    """
    cfg = PallasScanConfig() if config is None else config
    B, L, D = b.shape
    cplx = _utils.is_complex(b.dtype)
    # Narrow channel counts get a narrower (still power-of-two) block instead of padding to block_d.
    cfg = dataclasses.replace(cfg, block_d=min(cfg.block_d, pl.next_power_of_2(D)))
    bd = cfg.block_d
    dpad = (0, pl.cdiv(D, bd) * bd - D)
    A, Bp, H0 = (_to_planes(x) for x in (a, b, h0))
    if use_two_level(B, L, D, cfg):
        if shifted:  # the shift crosses chunk boundaries: make the shifted copy here
            from algornn.scan_kernels._linear_scan.xla import shift_decays

            A = tuple(shift_decays(x, reverse=reverse) for x in A)
        C = min(cfg.chunk, pl.next_power_of_2(L))
        lpad = (0, pl.cdiv(L, C) * C - L)  # padded steps (a=1, b=0) carry the state through unchanged
        A = _pad(A, ((0, 0), lpad, dpad), 1)
        Bp = _pad(Bp, ((0, 0), lpad, dpad), 0)
        H0 = _pad(H0, ((0, 0), dpad), 0)
        n = A[0].shape[1] // C
        zeros = tuple(jnp.zeros((B, n, A[0].shape[2]), A[0].dtype) for _ in A)
        out = _call(A, Bp, zeros, reverse=reverse, summary=True, chunk=C, cfg=cfg, interpret=interpret)
        ends, prods = out[: len(A)], out[len(A) :]  # (B, n, Dp): chunk end states from zero, decay products
        # Chunk-level scan from h0: s_k = P_k s_{k-1} + e_k (same kernel, one chunk of n steps).
        s = _call(
            prods,
            ends,
            tuple(h[:, None] for h in H0),
            reverse=reverse,
            summary=False,
            chunk=n,
            cfg=cfg,
            interpret=interpret,
        )
        if reverse:  # chunk k starts from s_{k+1}; the last chunk from h0
            init = tuple(jnp.concatenate([x[:, 1:], h[:, None]], 1) for x, h in zip(s, H0))
        else:
            init = tuple(jnp.concatenate([h[:, None], x[:, :-1]], 1) for x, h in zip(s, H0))
        h = _call(A, Bp, init, reverse=reverse, summary=False, chunk=C, cfg=cfg, interpret=interpret)
    else:
        A = _pad(A, ((0, 0), (0, 0), dpad), 1)
        Bp = _pad(Bp, ((0, 0), (0, 0), dpad), 0)
        H0 = tuple(x[:, None] for x in _pad(H0, ((0, 0), dpad), 0))  # (B, 1, Dp)
        h = _call(A, Bp, H0, reverse=reverse, summary=False, chunk=L, cfg=cfg, interpret=interpret, shifted=shifted)
    h = tuple(x[:, :L, :D] for x in h)
    return lax.complex(*h) if cplx else h[0]
