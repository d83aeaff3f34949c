"""HiPPO operators and their normal-plus-low-rank (NPLR) / diagonal-plus-low-rank (DPLR) forms.

Shape legend (docs/shapes.md): N state size; n row index, k column index; r_n = sqrt(2n + 1).
Everything here is float64 / complex128 numpy, computed once at initialisation; cast afterwards.

Continuous-time dynamics x'(t) = A x(t) + B u(t) (HiPPO, Gu et al. 2020, §2-4 and App. D;
S4, Gu et al. 2022, §3.1 and Thm. 1; conventions of docs/ssm.md §HiPPO measures):

- ``legs``: A_nk = -r_n r_k (n > k), -(n + 1) (n = k), 0 (n < k);  B_n = r_n.
  (The scale-invariant LegS ODE is x' = (1/t)(A x + B u); S4 uses the time-invariant A, B.)
- ``legt``: A_nk = -1/2 r_n r_k (1 if n >= k else (-1)^(n-k));  B_n = 1/2 r_n  (window θ = 2).
- ``lmu`` (θ = 1): A_nk = (2n+1)(-1 if n < k else (-1)^(n-k+1));  B_n = (-1)^n (2n+1).
  LegT in another basis: A_lmu = 2 S A_legt S^-1, B_lmu = 2 S B_legt, S = diag((-1)^n r_n).
- ``lagt`` (β = 1): A = 1/2 I - tril(ones) (-1/2 on the diagonal, -1 below);  B = 1.
- ``fout``: A0 = π(-diag(d, 1) + diag(d, -1)), d = [0, 0, 1, 0, 2, 0, 3, ...] (length N-1);
  B = [1, 0, √2, 0, √2, 0, ...];  A = A0 - B Bᵀ.

NPLR convention (``nplr``): with ``P (rank, N)`` from ``rank_correction`` the matrix
A + Σ_r P_r P_rᵀ = c I + S is normal (S skew-symmetric), and

    A = V_f (diag(Λ_f) - P̃_f P̃_fᴴ) V_fᴴ,   V_f = [V, conj(V)] unitary (N, N),
    Λ_f = [Λ, conj(Λ)],  P̃_f = [P̃, conj(P̃)] (columns = ranks),  B̃_f = [B̃, conj(B̃)].

Only one eigenvalue of each conjugate pair is kept: the one with Im Λ >= 0 (the library-wide
convention, also used by ``ssm.init``), so Λ, P̃, B̃ have N/2 entries. In the real basis,
``2 Re(V (diag(Λ) - P̃ᵀ conj(P̃)) Vᴴ)`` is *not* A (the low-rank term couples the two halves);
``ssm.kernels.dplr_kernel`` always works with the conjugate-closed system above, which is exact.
"""

import numpy as np

from algornn.scan_kernels._common.validate import check_choice, check_int

MEASURES = ("legs", "legt", "lagt", "fout", "lmu")
NPLR_MEASURES = ("legs", "legt", "lagt", "fout")
DPLR_INITS = ("lin", "inv", "legs", "real", "random")


def _check_N(N, measure):
    N = check_int("N", N)
    if measure == "fout" and N % 2:
        raise ValueError(f"N must be even for measure 'fout' (sine/cosine pairs), got N={N}")
    return N


def transition(measure: str, N: int):
    """HiPPO transition ``(A (N, N), B (N,))`` as float64 numpy for ``measure`` in ``MEASURES``.

    Conventions in the module docstring (docs/ssm.md §HiPPO measures). Raises ``ValueError`` for an unknown measure,
    a non-positive N, or an odd N with ``fout``.
    """
    check_choice("measure", measure, MEASURES)
    N = _check_N(N, measure)
    n = np.arange(N, dtype=np.float64)
    r = np.sqrt(2 * n + 1)
    row, col = n[:, None], n[None, :]
    if measure == "legs":
        A = -np.tril(r[:, None] * r[None, :], -1) - np.diag(n + 1)
        B = r.copy()
    elif measure == "legt":
        sign = np.where(row >= col, 1.0, (-1.0) ** (row - col))
        A = -0.5 * r[:, None] * r[None, :] * sign
        B = 0.5 * r
    elif measure == "lmu":
        R = (2 * n + 1)[:, None]
        A = R * np.where(row < col, -1.0, (-1.0) ** (row - col + 1))
        B = (-1.0) ** n * (2 * n + 1)
    elif measure == "lagt":
        A = 0.5 * np.eye(N) - np.tril(np.ones((N, N)))
        B = np.ones(N)
    else:  # fout
        freqs = np.arange(N // 2, dtype=np.float64)
        d = np.stack([np.zeros(N // 2), freqs], axis=-1).reshape(-1)[1:]  # (N-1,) = [0, 0, 1, 0, 2, ...]
        A0 = np.pi * (-np.diag(d, 1) + np.diag(d, -1))
        B = np.zeros(N)
        B[0::2] = np.sqrt(2.0)
        B[0] = 1.0
        A = A0 - B[:, None] * B[None, :]
    return A, B


def rank_correction(measure: str, N: int, rank: int = 1):
    """Low-rank ``P (rank, N)`` float64 with ``A + Σ_r P_r P_rᵀ`` normal (identity + skew-symmetric).

    LegS: P = √(n + 1/2) (every eigenvalue gets real part -1/2); LegT (needs rank >= 2): √(2n+1) split
    into odd / even entries, times 2^-1/2; LagT: √(1/2)·1; FouT: P = B. Extra rows are zeros.
    """
    check_choice("measure", measure, NPLR_MEASURES)
    N = _check_N(N, measure)
    rank = check_int("rank", rank)
    n = np.arange(N, dtype=np.float64)
    if measure == "legs":
        P = np.sqrt(n + 0.5)[None]
    elif measure == "legt":
        if rank < 2:
            raise ValueError(f"measure 'legt' needs rank >= 2 for a normal correction, got rank={rank}")
        r = np.sqrt(2 * n + 1) * 2**-0.5
        P = np.stack([np.where(n % 2 == 1, r, 0.0), np.where(n % 2 == 0, r, 0.0)])
    elif measure == "lagt":
        P = np.sqrt(0.5) * np.ones((1, N))
    else:  # fout
        P = transition("fout", N)[1][None]
    if rank > P.shape[0]:
        P = np.concatenate([P, np.zeros((rank - P.shape[0], N))], axis=0)
    return P


def _half_eigenbasis(S, tol):
    """Eigenvectors ``V (N, N/2)`` and ``ω (N/2,)`` of a real skew-symmetric S with Im λ = ω >= 0.

    ``[V, conj(V)]`` is unitary. The null space (ω = 0, even dimension) is given a real orthonormal
    basis u_j and paired as (u_2j + i u_2j+1)/√2, so its conjugate columns stay orthogonal.
    """
    N = S.shape[0]
    w, Q = np.linalg.eigh(-1j * S)  # S = i·(-iS): eigenvalues of S are i·w
    zero = np.abs(w) <= tol
    m = int(zero.sum())
    if m % 2:
        raise ValueError(f"odd null space dimension {m} for a skew-symmetric matrix of size {N}")
    cols, omegas = [], []
    if m:
        Qz = Q[:, zero]
        U, _, _ = np.linalg.svd(np.concatenate([Qz.real, Qz.imag], axis=1), full_matrices=False)
        U = U[:, :m]  # real orthonormal basis of the null space
        cols.append((U[:, 0::2] + 1j * U[:, 1::2]) / np.sqrt(2.0))
        omegas.append(np.zeros(m // 2))
    pos = w > tol
    cols.append(Q[:, pos])
    omegas.append(w[pos])
    V = np.concatenate(cols, axis=1)
    omega = np.concatenate(omegas)
    if V.shape[1] != N // 2:
        raise ValueError(f"could not split the spectrum into conjugate pairs (got {V.shape[1]} of {N // 2})")
    order = np.argsort(omega, kind="stable")
    return V[:, order], omega[order]


def nplr(measure: str, N: int, rank: int = 1):
    """Normal-plus-low-rank form of a HiPPO matrix, diagonalised in float64.

    Returns ``Lambda (N/2,) complex128`` (Im >= 0, ascending), ``P (rank, N/2) complex128`` (= Vᴴ P_r per
    row), ``B (N/2,) complex128`` (= Vᴴ B) and ``V (N, N/2) complex128`` such that (module docstring)
    ``A = V_f (diag(Λ_f) - P̃_f P̃_fᴴ) V_fᴴ`` with the conjugate halves appended. ``legt`` needs rank 2.
    """
    check_choice("measure", measure, NPLR_MEASURES)
    N = _check_N(N, measure)
    if N % 2:
        raise ValueError(f"N must be even for nplr (conjugate pairs), got N={N}")
    A, B = transition(measure, N)
    P = rank_correction(measure, N, rank)
    AP = A + P.T @ P
    c = float(np.mean(np.diag(AP)))
    S = AP - c * np.eye(N)
    if np.max(np.abs(S + S.T)) > 1e-8 * max(1.0, np.max(np.abs(S))):
        raise ValueError(f"A + P Pᵀ is not identity + skew-symmetric for measure {measure!r}")
    S = 0.5 * (S - S.T)
    V, omega = _half_eigenbasis(S, tol=1e-9 * max(1.0, np.max(np.abs(S))))
    Lambda = c + 1j * omega
    return Lambda, P @ V.conj(), V.conj().T @ B, V


def full_basis(V):
    """The unitary ``V_f = [V, conj(V)]`` ``(N, N)`` from ``nplr``'s half basis ``V (N, N/2)``."""
    return np.concatenate([V, V.conj()], axis=1)


def dplr(init: str, N: int, rank: int = 1, *, P_scale: float = 1.0, seed: int = 0):
    """S4D-style initial DPLR system ``(Lambda (N/2,), P (rank, N/2), B (N/2,))`` as complex128 numpy.

    ``init``: ``"lin"`` (Λ_n = -1/2 + iπn), ``"inv"`` (Λ_n = -1/2 + i(N/π)(N/(2n+1) - 1)),
    ``"legs"`` (Λ, B̃ of ``nplr("legs", N)``), ``"real"`` (Λ_n = -(n+1)), ``"random"`` (Λ_n = -1/2 +
    i·(N/2)·U[0,1), sorted). B = 1 except for ``legs``. P ~ complex normal (E|P|² = 1) times
    ``P_scale`` (``P_scale=0`` gives a diagonal system), drawn with ``numpy.random.default_rng(seed)``.
    """
    check_choice("init", init, DPLR_INITS)
    N = check_int("N", N)
    if N % 2:
        raise ValueError(f"N must be even (conjugate pairs), got N={N}")
    rank = check_int("rank", rank)
    rng = np.random.default_rng(seed)
    n = np.arange(N // 2, dtype=np.float64)
    B = np.ones(N // 2, dtype=np.complex128)
    if init == "lin":
        Lambda = -0.5 + 1j * np.pi * n
    elif init == "inv":
        Lambda = -0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1)
    elif init == "legs":
        Lambda, _, B, _ = nplr("legs", N)
    elif init == "real":
        Lambda = -(n + 1) + 0j
    else:  # "random"
        Lambda = -0.5 + 1j * np.sort(rng.uniform(0.0, N / 2, N // 2))
    P = (rng.standard_normal((rank, N // 2)) + 1j * rng.standard_normal((rank, N // 2))) / np.sqrt(2.0)
    return Lambda.astype(np.complex128), P_scale * P, B
