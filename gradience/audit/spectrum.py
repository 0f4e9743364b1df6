"""The singular spectrum of a LoRA update ΔW = B·A without ever forming ΔW (pure math).

With A (r×d_in) and B (d_out×r), thin QR factorisations Aᵀ = Q_A·R_A and B = Q_B·R_B give
B·A = Q_B·(R_B·R_Aᵀ)·Q_Aᵀ with orthonormal Q_A, Q_B, so the singular values of B·A are those
of the small r×r core R_B·R_Aᵀ. Cost O(r²(d_in + d_out)) in float64; no d_out×d_in matrix.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas, lapack

#: CholeskyQR2 is used only when the first Cholesky factor is this well conditioned
#: (reciprocal 1-norm condition number); its R is then as accurate as Householder's.
CHOLESKY_QR_MIN_RCOND = 1e-5


def householder_r(work: np.ndarray) -> np.ndarray:
    """R of a Householder QR (LAPACK ``dgeqrf``), overwriting the Fortran-ordered ``work``."""
    m, n = work.shape
    factored, _tau, _work, info = lapack.dgeqrf(work, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dgeqrf failed (info={info})")
    return np.triu(factored[: min(m, n), :])


def _gram_cholesky(work: np.ndarray) -> np.ndarray | None:
    """Upper Cholesky factor of XᵀX (BLAS ``dsyrk`` + LAPACK ``dpotrf``), None if not definite."""
    gram = blas.dsyrk(1.0, work, trans=1, lower=0)
    factor, info = lapack.dpotrf(gram, lower=0, clean=1, overwrite_a=1)
    return factor if info == 0 else None


def cholesky_qr2_r(work: np.ndarray) -> np.ndarray | None:
    """R of CholeskyQR2 (Fukaya et al. 2014), overwriting ``work``; None when not safe.

    R₁ = chol(XᵀX), Q₁ = X·R₁⁻¹, R₂ = chol(Q₁ᵀQ₁), R = R₂·R₁. All level-3 BLAS, about a third
    faster than Householder for r ≈ 64. Its R is backward stable for κ(X) well below u^-1/2
    (Yamamoto et al. 2015); it declines (None) when R₁'s estimated condition number exceeds
    1/CHOLESKY_QR_MIN_RCOND or a Cholesky fails (rank-deficient or tiny X), and ``work`` is
    untouched in that case.
    """
    m, n = work.shape
    if m < n:
        return None
    first = _gram_cholesky(work)
    if first is None:
        return None
    rcond, info = lapack.dtrcon(first, norm="1", uplo="U", diag="N")
    if info != 0 or not rcond >= CHOLESKY_QR_MIN_RCOND:
        return None
    q = blas.dtrsm(1.0, first, work, side=1, lower=0, overwrite_b=1)  # X·R₁⁻¹ in place
    second = _gram_cholesky(q)
    if second is None:  # cannot happen for a well-conditioned R₁ but never guess
        raise np.linalg.LinAlgError(
            "CholeskyQR2: second Cholesky failed after a well-conditioned first"
        )
    return second @ first


def r_factor(tall: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """The R of a thin QR of a (m×n) matrix, in float64: n×n if m ≥ n, else m×n.

    CholeskyQR2 when the matrix is well conditioned, Householder QR (``dgeqrf``) otherwise;
    both give R up to the signs of its rows, and RᵀR = XᵀX. With ``overwrite`` an input that
    already is Fortran-ordered float64 (e.g. ``A.T`` of a C-ordered A) is used as the work
    array, saving a copy; otherwise the caller's data is left alone.
    """
    reuse = (
        overwrite and tall.dtype == np.float64 and tall.flags.f_contiguous and tall.flags.writeable
    )
    work = tall if reuse else np.array(tall, dtype=np.float64, order="F", copy=True)
    m, n = work.shape
    if m == 0 or n == 0:
        return np.zeros((min(m, n), n))
    fast = cholesky_qr2_r(work)
    return fast if fast is not None else householder_r(work)


def lora_singular_values(
    lora_a: np.ndarray, lora_b: np.ndarray, overwrite: bool = False
) -> np.ndarray:
    """Singular values of B·A (unscaled), descending, length r (zeros where rank < r).

    ``lora_a`` is A with shape (r, d_in) and ``lora_b`` is B with shape (d_out, r), as PEFT
    stores them (also for fan_in_fan_out modules such as GPT-2's Conv1D). With ``overwrite``
    the inputs may be destroyed (used by the streaming audit to avoid copies).
    """
    if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != lora_b.shape[1]:
        raise ValueError(f"lora_A {lora_a.shape} and lora_B {lora_b.shape} do not form B·A")
    r = lora_a.shape[0]
    core = r_factor(lora_b, overwrite) @ r_factor(lora_a.T, overwrite).T
    values = np.linalg.svd(core, compute_uv=False) if core.size else np.zeros(0)
    spectrum = np.zeros(r)
    spectrum[: values.size] = values
    return spectrum
