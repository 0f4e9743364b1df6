"""Best rank-k truncation of a LoRA update B·A from the audit's thin-QR factors (pure math).

With thin QR factorisations Aᵀ = Q_A·R_A and B = Q_B·R_B, B·A = Q_B·C·Q_Aᵀ for the small core
C = R_B·R_Aᵀ = U·S·Vᵀ (see :mod:`gradience.audit.spectrum`, whose ``r_factor`` this reuses).
The best rank-k approximation (Eckart–Young) is Q_B·U_k·S_k·V_kᵀ·Q_Aᵀ, and the Q factors never
need forming, because

    B·(R_Aᵀ·V_k) = Q_B·C·V_k = Q_B·U_k·S_k      and      (U_kᵀ·R_B)·A = S_k·V_kᵀ·Q_Aᵀ.

Scaling each by S_k^(-1/2) gives the balanced factors B′ = Q_B·U_k·√S_k (d_out×k) and
A′ = √S_k·V_kᵀ·Q_Aᵀ (k×d_in): B′·A′ is the truncation, and neither factor carries more of the
update's magnitude than the other (what half precision needs). Cost O(r²(d_in + d_out)); no
d_out×d_in matrix is ever formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradience.audit.spectrum import r_factor

#: Components with σᵢ ≤ this × max(shape) × σ₁ are numerically zero (numpy's matrix_rank
#: rule): they are written as zero columns rather than divided by a √σ that is only noise.
_ZERO_RTOL = np.finfo(np.float64).eps


@dataclass(frozen=True)
class CoreSVD:
    """The SVD of the r×r core of one module's B·A, and the R factors it came from."""

    r_a: np.ndarray  # R of the thin QR of Aᵀ
    r_b: np.ndarray  # R of the thin QR of B
    u: np.ndarray
    singular_values: np.ndarray  # of B·A (unscaled), descending, length min(core shape)
    vt: np.ndarray

    @property
    def rank_bound(self) -> int:
        """How many singular values B·A can have (r when both dimensions exceed r)."""
        return int(self.singular_values.size)


def core_svd(lora_a: np.ndarray, lora_b: np.ndarray) -> CoreSVD:
    """SVD of R_B·R_Aᵀ for A (r×d_in) and B (d_out×r) as PEFT stores them; inputs are kept."""
    if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != lora_b.shape[1]:
        raise ValueError(f"lora_A {lora_a.shape} and lora_B {lora_b.shape} do not form B·A")
    r_b, r_a = r_factor(lora_b), r_factor(lora_a.T)
    u, s, vt = np.linalg.svd(r_b @ r_a.T, full_matrices=False)
    return CoreSVD(r_a=r_a, r_b=r_b, u=u, singular_values=s, vt=vt)


def padded_spectrum(core: CoreSVD, r: int) -> np.ndarray:
    """The singular values padded with zeros to length r, as the audit reports them."""
    spectrum = np.zeros(r)
    spectrum[: core.rank_bound] = core.singular_values
    return spectrum


def balanced_factors(
    core: CoreSVD, lora_a: np.ndarray, lora_b: np.ndarray, rank: int
) -> tuple[np.ndarray, np.ndarray]:
    """(B′, A′) with B′·A′ the best rank-``rank`` approximation of B·A, in the balanced split.

    ``rank`` beyond the number of singular values, or components that are numerically zero,
    give zero columns of B′ and rows of A′, so the shapes are always (d_out×rank), (rank×d_in).
    """
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    kept = min(rank, core.rank_bound)
    s = core.singular_values[:kept]
    left = lora_b @ (core.r_a.T @ core.vt[:kept].T)  # Q_B·U_k·S_k
    right = (core.u[:, :kept].T @ core.r_b) @ lora_a  # S_k·V_kᵀ·Q_Aᵀ
    floor = _ZERO_RTOL * max(lora_a.shape[1], lora_b.shape[0]) * (float(s[0]) if kept else 0.0)
    inverse_root = np.zeros(kept)
    significant = s > floor
    inverse_root[significant] = 1.0 / np.sqrt(s[significant])
    new_b = np.zeros((lora_b.shape[0], rank))
    new_a = np.zeros((rank, lora_a.shape[1]))
    new_b[:, :kept] = left * inverse_root
    new_a[:kept] = right * inverse_root[:, None]
    return new_b, new_a


def kept_energy(singular_values: np.ndarray, rank: int) -> float:
    """Σ_{i≤rank} σᵢ² / Σ σᵢ² (1 for a zero update: nothing is lost)."""
    energy = np.asarray(singular_values, dtype=np.float64) ** 2
    total = float(energy.sum())
    return float(energy[:rank].sum()) / total if total > 0 else 1.0


def optimal_relative_error(singular_values: np.ndarray, rank: int) -> float:
    """Eckart–Young: ‖B·A − best rank-k‖_F / ‖B·A‖_F = √(Σ_{i>k} σᵢ² / Σ σᵢ²)."""
    energy = np.asarray(singular_values, dtype=np.float64) ** 2
    total = float(energy.sum())
    return math.sqrt(float(energy[rank:].sum()) / total) if total > 0 else 0.0


def difference_norm(
    lora_a: np.ndarray,
    lora_b: np.ndarray,
    other_a: np.ndarray,
    other_b: np.ndarray,
    factor: float = 1.0,
) -> float:
    """‖B·A − factor·B₂·A₂‖_F without forming either product.

    The difference is itself a low-rank product [B, −factor·B₂]·[A; A₂], so its Frobenius norm
    is that of the small core of the stacked factors. Computed this way the result keeps its
    relative accuracy even when the difference is tiny (a Gram-matrix expansion
    ‖X‖² − 2⟨X, Y⟩ + ‖Y‖² would cancel catastrophically).
    """
    stacked_a = np.vstack([lora_a, other_a])
    stacked_b = np.hstack([lora_b, -factor * other_b])
    core = r_factor(stacked_b) @ r_factor(stacked_a.T).T
    return float(np.linalg.norm(core))


def peft_scaling(alpha: float, rank: int, use_rslora: bool) -> float:
    """The scaling PEFT computes from ``lora_alpha`` and ``r`` (``LoraLayer.update_layer``)."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def alpha_for_scaling(scaling: float, rank: int, use_rslora: bool) -> float:
    """The ``lora_alpha`` that gives ``scaling`` at ``rank``: s·k (s·√k with rsLoRA).

    PEFT divides it by k again in floating point, which returns ``scaling`` to within one unit
    in the last place (bit-exact for most values; for some no float α is: α's spacing divided
    by k can exceed the spacing of the scalings). compress.json records the scaling PEFT will
    apply, and the error it reports is measured with it.
    """
    return scaling * (math.sqrt(rank) if use_rslora else rank)
