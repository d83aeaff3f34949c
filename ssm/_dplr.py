"""S4's DPLR kernel: truncation correction, Cauchy kernel at the roots of unity, Woodbury, inverse FFT.

Shape legend (docs/shapes.md): D channels (``...`` batch dims), N state size, N/2 the conjugate half,
r the low rank, L length, F = L/2 + 1 frequencies. Conventions: ``ssm.kernels`` module docstring.

System (S4, Gu et al. 2022, §3.3, Alg. 1): A = diag(Λ_f) − P_f P_fᴴ on the conjugate-closed basis
(Λ_f = [Λ, Λ̄], P_f = [P, P̄], B_f = [B, B̄], C_f = [C, C̄]); bilinear discretization with step Δ;
K_l = C_fᵀ Ā^l B̄_f (real). At the roots of unity ω_k = exp(−2πik/L) (ω^L = 1):

    K̂(ω) = Σ_{l<L} K_l ω^l = C̃ᵀ (I − Ā ω)^{-1} B̄,          C̃ᵀ = Cᵀ (I − Ā^L)      (truncation)
          = Δ · C̃ᵀ [ (1−ω) I − (1+ω) Δ/2 A ]^{-1} B          (bilinear, no pole at ω = −1)

With R = (1−ω) − (1+ω) Δ/2 Λ_f (diagonal) and β = (1+ω) Δ/2 the Woodbury identity gives

    K̂ = Δ [ r_CB − β r_CP (I + β r_PP)^{-1} r_PB ],   r_xy(ω) = Σ_n x_n y_n / R_n(ω)   (Cauchy)

summed over both conjugate halves; then K = irfft(K̂, L). C̃ is computed in the exact real form of
the system (``dplr_real_form``) by binary powering of the real N×N Ā, so callers pass the plain C.
The Cauchy sums are evaluated in frequency chunks with a custom VJP that recomputes them chunk by
chunk: forward and backward memory is O(D·chunk·N), never O(D·N·L).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from algornn.scan_kernels._common.validate import as_array, check_inexact, check_int, check_ndim
from algornn.ssm import _checks as ck

SQRT2 = 2.0**0.5  # a Python float stays weakly typed under strict promotion


def _check_dplr(Lambda, P, B, C, dt):
    Lambda, P, B, C = (as_array(n, x) for x, n in ((Lambda, "Lambda"), (P, "P"), (B, "B"), (C, "C")))
    dt = as_array("dt", dt)
    for x, name in ((Lambda, "Lambda"), (P, "P"), (B, "B"), (C, "C")):
        check_inexact(name, x, allow_complex=True)
    check_inexact("dt", dt, allow_complex=False)
    check_ndim("Lambda", Lambda, 1, "(..., N/2)", at_least=True)
    check_ndim("P", P, 2, "(..., rank, N/2)", at_least=True)
    h = Lambda.shape[-1]
    for x, name in ((P, "P"), (B, "B"), (C, "C")):
        if x.ndim < 1 or x.shape[-1] != h:
            raise ValueError(f"{name} must end in N/2={h} (from Lambda {Lambda.shape}), got shape {x.shape}")
    batch = ck.batch_shape(
        [("Lambda", Lambda.shape[:-1]), ("P", P.shape[:-2]), ("B", B.shape[:-1]), ("C", C.shape[:-1]), ("dt", dt.shape)]
    )
    rdt = ck.real_dtype(Lambda, P, B, C, dt)
    cdt = ck.complex_dtype(rdt)
    r = P.shape[-2]
    return (
        ck.bcast(Lambda.astype(cdt), batch + (h,)),
        ck.bcast(P.astype(cdt), batch + (r, h)),
        ck.bcast(B.astype(cdt), batch + (h,)),
        ck.bcast(C.astype(cdt), batch + (h,)),
        ck.bcast(dt.astype(rdt), batch),
    )


@ck.jit
def dplr_real_form(Lambda, P, B, C):
    """Exact real N-dim form ``(A (..., N, N), B (..., N), C (..., N))`` of the conjugate-closed DPLR system.

    Coordinates u = √2 [Re y; Im y] of the conjugate-closed state [y; ȳ]:
    A = [[Re Λ, −Im Λ], [Im Λ, Re Λ]] (diagonal blocks) − 2 qᵀq with q = [Re P, Im P] ``(..., r, N)``,
    B = √2 [Re B; Im B], C = √2 [Re C; −Im C], so ``C·Ā^l B̄`` is the conjugate-half kernel.
    """
    Lambda, P, B, C, _ = _check_dplr(Lambda, P, B, C, jnp.zeros((), jnp.float32))
    q = _realify(P)  # (..., r, N)
    A = _complex_mult_matrix(Lambda) - 2.0 * jnp.einsum("...rn,...rm->...nm", q, q)
    Br = SQRT2 * _realify(B)
    Cr = SQRT2 * _realify(jnp.conj(C))
    return A, Br, Cr


def _realify(x):
    """complex ``(..., h)`` -> real ``(..., 2h)`` = [Re x, Im x]."""
    return jnp.concatenate([jnp.real(x), jnp.imag(x)], axis=-1)


def _complex_mult_matrix(a):
    """Real ``(..., 2h, 2h)`` matrix of y ↦ a ⊙ y in [Re y; Im y] coordinates: [[Re a, −Im a], [Im a, Re a]]."""
    h = a.shape[-1]
    eye = ck.bcast(jnp.eye(h, dtype=jnp.real(a).dtype), a.shape[:-1] + (h, h))
    re, im = jnp.real(a)[..., None, :] * eye, jnp.imag(a)[..., None, :] * eye
    return jnp.concatenate([jnp.concatenate([re, -im], axis=-1), jnp.concatenate([im, re], axis=-1)], axis=-2)


def _bilinear_real(Lambda, P, dt):
    """Real-form bilinear Ā = (I − Δ/2 A)^{-1}(I + Δ/2 A) = 2 (I − Δ/2 A)^{-1} − I without a dense solve.

    I − Δ/2 A = D₂ + Δ qᵀq with D₂ the real matrix of y ↦ (1 − z) ⊙ y (z = Δ/2 Λ), so by Woodbury
    (I − Δ/2 A)^{-1} = D₂^{-1} − G (I/Δ + q G)^{-1} Hᵀ,  G = D₂^{-1} qᵀ,  H = D₂^{-ᵀ} qᵀ  (rank r).
    """
    z = (0.5 * dt)[..., None].astype(Lambda.dtype) * Lambda  # (..., N/2)
    inv = 1.0 / (1.0 - z)
    q = _realify(P)  # (..., r, N)
    G = _realify(inv[..., None, :] * P)  # (..., r, N): rows of D₂^{-1} qᵀ
    H = _realify(jnp.conj(inv)[..., None, :] * P)  # rows of D₂^{-ᵀ} qᵀ
    r = P.shape[-2]
    S = jnp.einsum("...rn,...sn->...rs", q, G)  # (..., r, r): q G
    S = S + ck.bcast(jnp.eye(r, dtype=S.dtype), S.shape) / dt[..., None, None]
    T = jnp.linalg.solve(S, H)  # (..., r, N): S^{-1} Hᵀ (r x r system)
    Minv = _complex_mult_matrix(inv) - jnp.einsum("...rn,...rm->...nm", G, T)
    N = Minv.shape[-1]
    return 2.0 * Minv - ck.bcast(jnp.eye(N, dtype=Minv.dtype), Minv.shape)


def _truncation_correction(Lambda, P, C, dt, L):
    """C̃ = (I − Ā^L)ᵀ C for the conjugate half, via the real form and binary powering of Ā."""
    c = SQRT2 * _realify(jnp.conj(C))  # real-form C (see dplr_real_form)
    Abar = _bilinear_real(Lambda, P, dt)
    v, power, e = c, Abar, L  # v ← cᵀ Ā^L, bit by bit
    while e:
        if e & 1:
            v = jnp.einsum("...n,...nm->...m", v, power)
        e >>= 1
        if e:
            power = power @ power
    ct = c - v
    h = Lambda.shape[-1]
    return lax.complex(ct[..., :h], -ct[..., h:]).astype(C.dtype) / SQRT2


def _chunks(L, freq_chunk, dtype):
    F = L // 2 + 1
    fc = min(int(freq_chunk), F)
    n_chunks = -(-F // fc)
    return F, fc, n_chunks, jnp.arange(n_chunks * fc, dtype=dtype).reshape(n_chunks, fc)


def _cauchy_terms(alpha, kc, L):
    """g = 1/(α − ω_k), gc = 1/(ᾱ − ω_k) for the frequencies ``kc (fc,)``: each ``(M, fc, N/2)``.

    Real-plane reciprocals 1/(x + iy) = (x − iy)/(x² + y²) (XLA's complex division is ~1.5x slower on
    CPU); both share x = Re α − Re ω.
    """
    theta = (-2.0 * np.pi / L) * kc
    wr, wi = jnp.cos(theta)[None, :, None], jnp.sin(theta)[None, :, None]  # (1, fc, 1)
    ar, ai = jnp.real(alpha)[:, None, :], jnp.imag(alpha)[:, None, :]  # (M, 1, N/2)
    x, y, yc = ar - wr, ai - wi, -ai - wi
    inv, invc = 1.0 / (x * x + y * y), 1.0 / (x * x + yc * yc)
    return lax.complex(x * inv, -y * inv), lax.complex(x * invc, -yc * invc)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _cauchy_sums(wa, alpha, L, freq_chunk):
    """r_q(ω_k) = Σ_n wa_qn/(α_n − ω_k) + conj(wa_qn)/(ᾱ_n − ω_k), k <= L/2 -> ``(M, F, Q)``.

    Frequency chunks via ``lax.map``; the custom VJP recomputes the Cauchy terms chunk by chunk, so
    neither pass stores an (M, F, N/2) array and the backward costs about two forwards.
    """
    F, _, n_chunks, k = _chunks(L, freq_chunk, jnp.real(alpha).dtype)

    def chunk(kc):  # (fc,) -> (M, fc, Q)
        g, gc = _cauchy_terms(alpha, kc, L)
        return jnp.einsum("mfn,mqn->mfq", g, wa) + jnp.einsum("mfn,mqn->mfq", gc, jnp.conj(wa))

    R = lax.map(chunk, k)  # (n_chunks, M, fc, Q)
    M, Q = wa.shape[:2]
    return jnp.moveaxis(R, 0, 1).reshape(M, -1, Q)[:, :F]


def _cauchy_sums_fwd(wa, alpha, L, freq_chunk):
    return _cauchy_sums(wa, alpha, L, freq_chunk), (wa, alpha)


def _cauchy_sums_bwd(L, freq_chunk, res, ct):
    # JAX cotangents pair bilinearly (no conjugation): holomorphic parts get ct·∂, the parts in ᾱ and
    # conj(wa) get conj(ct·∂).  ∂g/∂α = −g², ∂gc/∂ᾱ = −gc².
    wa, alpha = res
    F, fc, n_chunks, k = _chunks(L, freq_chunk, jnp.real(alpha).dtype)
    M, Q = wa.shape[:2]
    ct = jnp.pad(ct, ((0, 0), (0, n_chunks * fc - F), (0, 0)))  # padded frequencies get zero cotangent
    ct = jnp.moveaxis(ct.reshape(M, n_chunks, fc, Q), 1, 0)  # (n_chunks, M, fc, Q)

    def step(carry, x):
        d_wa, d_alpha = carry
        kc, ctc = x
        g, gc = _cauchy_terms(alpha, kc, L)
        A1 = jnp.einsum("mfq,mfn->mqn", ctc, g)
        A2 = jnp.einsum("mfq,mfn->mqn", ctc, gc)
        B1 = jnp.einsum("mfq,mfn->mqn", ctc, g * g)
        B2 = jnp.einsum("mfq,mfn->mqn", ctc, gc * gc)
        d_wa = d_wa + A1 + jnp.conj(A2)
        d_alpha = d_alpha - jnp.sum(wa * (B1 + jnp.conj(B2)), axis=1)
        return (d_wa, d_alpha), None

    (d_wa, d_alpha), _ = lax.scan(step, (jnp.zeros_like(wa), jnp.zeros_like(alpha)), (k, ct))
    return d_wa, d_alpha


_cauchy_sums.defvjp(_cauchy_sums_fwd, _cauchy_sums_bwd)


def _cauchy(w, z, L, freq_chunk):
    """r_q(ω_k) = Σ_n w_qn / R_n(ω_k) + conj(w_qn) / conj(R_n)(ω_k) for k <= L/2: ``(M, F, Q)``.

    R_n(ω) = (1 − ω) − (1 + ω) z_n = (1 + z_n)(α_n − ω) with α = (1 − z)/(1 + z) = 1/ā (bilinear), so
    the weights absorb 1/(1 + z) and each entry is one Cauchy term 1/(α_n − ω_k).
    """
    alpha = (1.0 - z) / (1.0 + z)  # (M, N/2)
    wa = w / (1.0 + z)[:, None, :]  # (M, Q, N/2)
    return _cauchy_sums(wa, alpha, L, freq_chunk)


@ck.jit(static_argnames=("L", "freq_chunk"))
def dplr_kernel(Lambda, P, B, C, dt, L, *, freq_chunk=256):
    """S4 (DPLR, bilinear) kernel: ``Lambda, B, C (..., N/2)``, ``P (..., rank, N/2)`` complex, ``dt`` batch
    -> ``K (..., L)`` real with ``K_l = C_fᵀ Ā^l B̄_f`` for A = diag(Λ_f) − P_f P_fᴴ (module docstring).

    ``freq_chunk``: frequencies per chunk of the Cauchy sums (memory ~ D·freq_chunk·N complex).
    A diagonal entry Λ_n = 0 is a pole at ω = 1 (raw FouT from ``nplr``): keep Re Λ <= −1e-4 as S4
    layers do. Cost O(D·N·L) for the sums plus O(D·N³·log L) for the truncation correction.
    """
    L = check_int("L", L)
    check_int("freq_chunk", freq_chunk)
    Lambda, P, B, C, dt = _check_dplr(Lambda, P, B, C, dt)
    batch, h, r = Lambda.shape[:-1], Lambda.shape[-1], P.shape[-2]
    Ct = _truncation_correction(Lambda, P, C, dt, L)
    M = int(np.prod(batch, dtype=np.int64))
    Lam, Pm, Bm, Cm, dtm = (Lambda.reshape(M, h), P.reshape(M, r, h), B.reshape(M, h), Ct.reshape(M, h), dt.reshape(M))
    U = jnp.concatenate([Cm[:, None], jnp.conj(Pm)], axis=1)  # (M, r+1, N/2): C̃, P̄
    W = jnp.concatenate([Bm[:, None], Pm], axis=1)  # (M, r+1, N/2): B, P
    w = (U[:, :, None, :] * W[:, None, :, :]).reshape(M, (r + 1) ** 2, h)  # (M, (r+1)², N/2)
    z = (0.5 * dtm)[:, None].astype(Lam.dtype) * Lam  # (M, N/2): Δ/2 Λ
    rdt = dtm.dtype
    R = _cauchy(w, z, L, freq_chunk)
    R = R.reshape(M, L // 2 + 1, r + 1, r + 1)  # [u, v] = r_{U_u W_v}

    # Woodbury: K̂ = Δ [r_CB − β r_CP (I + β r_PP)^{-1} r_PB],  β = (1 + ω) Δ/2
    theta = (-2.0 * np.pi / L) * jnp.arange(L // 2 + 1, dtype=rdt)
    omega = lax.complex(jnp.cos(theta), jnp.sin(theta))  # (F,)
    beta = (0.5 * (1.0 + omega))[None, :] * dtm[:, None].astype(omega.dtype)  # (M, F)
    if r == 1:
        corr = R[..., 0, 1] * R[..., 1, 0] / (1.0 + beta * R[..., 1, 1])
    else:
        eye = ck.bcast(jnp.eye(r, dtype=R.dtype), R[..., 1:, 1:].shape)
        X = jnp.linalg.solve(eye + beta[..., None, None] * R[..., 1:, 1:], R[..., 1:, :1])
        corr = (R[..., :1, 1:] @ X)[..., 0, 0]
    Kf = (R[..., 0, 0] - beta * corr) * dtm[:, None].astype(omega.dtype)  # (M, F)
    K = jnp.fft.irfft(Kf, n=L, axis=-1)  # (M, L)
    return K.reshape(batch + (L,)).astype(rdt)


@ck.jit(static_argnames=("L",))
def dplr_kernel_reference(Lambda, P, B, C, dt, L):
    """Same kernel from the dense real form: bilinear Ā by a linear solve, then K_l = C Ā^l B̄ by powers."""
    from algornn.ssm.kernels import dense_kernel  # local import: kernels re-exports this module

    L = check_int("L", L)
    Lambda, P, B, C, dt = _check_dplr(Lambda, P, B, C, dt)
    A, Br, Cr = dplr_real_form(Lambda, P, B, C)
    return dense_kernel(A, Br, Cr, dt, L, discretization="bilinear")
