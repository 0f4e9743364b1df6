"""The singular spectrum of a LoRA update ΔW = B·A without ever forming ΔW (pure math).

With A (r×d_in) and B (d_out×r), thin QR factorisations Aᵀ = Q_A·R_A and B = Q_B·R_B give
B·A = Q_B·(R_B·R_Aᵀ)·Q_Aᵀ with orthonormal Q_A, Q_B, so the singular values of B·A are those
of the small r×r core R_B·R_Aᵀ. Cost O(r²(d_in + d_out)) in float64; no d_out×d_in matrix.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack


def r_factor(tall: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """The R of a thin QR of a (m×n) matrix, in float64: n×n if m ≥ n, else m×n.

    Calls LAPACK ``dgeqrf`` (Householder QR, backward stable) on a Fortran-ordered float64
    copy; with ``overwrite`` an input that already is Fortran-ordered float64 (e.g. ``A.T`` of
    a C-ordered A) is factored in place instead, saving the copy.
    """
    reuse = (
        overwrite and tall.dtype == np.float64 and tall.flags.f_contiguous and tall.flags.writeable
    )
    work = tall if reuse else np.array(tall, dtype=np.float64, order="F", copy=True)
    m, n = work.shape
    if m == 0 or n == 0:
        return np.zeros((min(m, n), n))
    factored, _tau, _work, info = lapack.dgeqrf(work, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dgeqrf failed (info={info})")
    return np.triu(factored[: min(m, n), :])


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
