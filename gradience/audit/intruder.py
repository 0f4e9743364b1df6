"""Intruder dimensions: new high-ranking singular vectors that LoRA puts into W0 + s·B·A.

Definition (Shuttleworth, Andreas, Torralba, Sharma, "LoRA vs Full Fine-tuning: An Illusion
of Equivalence", arXiv:2410.21228): a singular vector y_j of the fine-tuned matrix is an
intruder dimension when max_i |cos(y_j, x_i)| < ε over *all* singular vectors x_i of the
pre-trained W0. Parameters and conventions are those of PEFT's implementation,
``peft/tuners/lora/intruders.py::reduce_intruder_dimension`` (PEFT #2999, in PEFT 0.21.2):
the left singular vectors (``U`` of ``torch.linalg.svd(W, full_matrices=False)``) of the
weight *as the base layer stores it* (``nn.Linear``: out × in; GPT-2's ``Conv1D`` and
embeddings: transposed) and of W0 + ``get_delta_weight`` (= s·B·A with s = α/r, or α/√r with
rsLoRA, in the stored orientation); the absolute cosine; only the ``top_k = 10`` largest
singular vectors of the merged weight are tested; an intruder when the similarity is below
``threshold_epsilon = 0.5``. PEFT computes in the base dtype upcast to float32; here
everything is float64 except W0's stored left singular vectors (float32, see below).

How it is computed, exactly and without an SVD of W0 + s·B·A. W0 = U0·S0·V0ᵀ (thin, p =
min(m, n) vectors) is the expensive part, done once per base tensor and cached
(:class:`gradience.audit.base_weights.SvdCache`). In the orthonormal basis Q = [U0, Q_B], with
Q_B·R the part of B outside span(U0) (empty when m ≤ n, where U0 is a complete basis), the
columns of W = W0 + s·B·A are M = [S0·V0ᵀ; 0] + s·B̂·A with B̂ = Qᵀ·B, so

    K = M·Mᵀ = diag(S0², 0) + s·(B̂·Ĉ + Ĉᵀ·B̂ᵀ) + s²·B̂·(A·Aᵀ)·B̂ᵀ,   Ĉ = [A·W0ᵀ·U0, 0]

(A·V0·S0 = A·W0ᵀ·U0, so V0 is never needed): a diagonal plus a rank-≤2r matrix of size
p (+ r). Its top-k eigenpairs are the top-k singular values² of W and their left singular
vectors in the basis Q; since Q's first p columns *are* W0's singular vectors, the cosine
of y_j with every x_i is just the eigenvector's first p coordinates, and the similarity is
their largest magnitude. Eigenpairs come from Lanczos (ARPACK ``eigsh``, machine-precision
tolerance) on an operator costing O((p + r)·r) per product, or from a dense ``eigh`` of K
when it is small (or if Lanczos does not converge). Per module after the cache: reading W0,
a few O(m·n·r) products and a small eigenproblem; tests check all of it against dense
float64 SVDs of W0 and W0 + s·B·A, and against PEFT's tool itself. The streaming (base
tensors, cache, adapter modules) lives in :mod:`gradience.audit.intruder_scan`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

#: PEFT's ``reduce_intruder_dimension`` defaults (top_k, threshold_epsilon).
TOP_K = 10
EPSILON = 0.5
#: K up to this size is factored densely (eigh); larger ones by Lanczos on the operator.
DENSE_MAX = 384
_BLOCK_ROWS = 2048  # rows of U0 upcast to float64 at a time


@dataclass(frozen=True)
class BaseFactors:
    """W0's thin SVD as the scan uses it: left singular vectors U0 (m × p, float32) and
    singular values S0 (p, float64, descending)."""

    left: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class TopVectors:
    """The top-k singular values of W0 + s·B·A and, for each of their left singular vectors,
    the largest |cos| with any left singular vector of W0."""

    singular_values: np.ndarray
    similarity: np.ndarray

    def intruders(self, epsilon: float = EPSILON) -> np.ndarray:
        """Positions (0 = largest) of the intruder dimensions: similarity < epsilon."""
        return np.flatnonzero(self.similarity < epsilon)


def base_factors(w0: np.ndarray) -> BaseFactors:
    """W0's thin SVD (LAPACK gesdd, gesvd if that fails to converge); U0 kept as float32, which
    halves the cache and bounds the cosines' error near 1e-7 (far below any threshold's
    meaning), and is what every run uses, so first and cached audits agree bit for bit."""
    try:
        left, values, _ = scipy.linalg.svd(w0, full_matrices=False, lapack_driver="gesdd")
    except np.linalg.LinAlgError:
        left, values, _ = scipy.linalg.svd(w0, full_matrices=False, lapack_driver="gesvd")
    return BaseFactors(left.astype(np.float32), values.astype(np.float64))


def _u0t(left: np.ndarray, x: np.ndarray) -> np.ndarray:
    """U0ᵀ·x in float64, U0 upcast a block of rows at a time (never a float64 copy of U0)."""
    out = np.zeros((left.shape[1], x.shape[1]))
    for start in range(0, left.shape[0], _BLOCK_ROWS):
        stop = start + _BLOCK_ROWS
        out += left[start:stop].astype(np.float64).T @ x[start:stop]
    return out


def _u0(left: np.ndarray, y: np.ndarray) -> np.ndarray:
    """U0·y in float64, a block of rows at a time."""
    out = np.empty((left.shape[0], y.shape[1]))
    for start in range(0, left.shape[0], _BLOCK_ROWS):
        stop = start + _BLOCK_ROWS
        out[start:stop] = left[start:stop].astype(np.float64) @ y
    return out


def gram_in_base_basis(
    w0: np.ndarray, factors: BaseFactors, b: np.ndarray, a: np.ndarray, scaling: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K = (W0 + s·B·A)(W0 + s·B·A)ᵀ in the basis [U0, Q_B], as diag(d) + F·Φ·Fᵀ.

    ``w0`` is m × n (stored orientation), ``b`` m × r, ``a`` r × n. Returns (d, F, Φ): d of
    length N = p (+ r when m > p), F = [B̂, Ĉᵀ] (N × 2r), Φ = [[s²·A·Aᵀ, s·I], [s·I, 0]].
    """
    m, p, r = w0.shape[0], factors.values.size, b.shape[1]
    # one pass over U0 for both: B̃ = U0ᵀ·B and A·W0ᵀ·U0 = A·V0·S0 (r × p)
    projected = _u0t(factors.left, np.hstack([b, w0 @ a.T]))
    b_in, c = projected[:, :r], projected[:, r:].T
    if m > p:  # U0 spans only part of R^m: add the rest of B's column space
        r_out = np.linalg.qr(b - _u0(factors.left, b_in), mode="r")
        b_hat = np.vstack([b_in, r_out])
        c_hat = np.hstack([c, np.zeros((r, r_out.shape[0]))])
        d = np.concatenate([factors.values**2, np.zeros(r_out.shape[0])])
    else:
        b_hat, c_hat, d = b_in, c, factors.values**2
    f = np.hstack([b_hat, c_hat.T])
    phi = np.block(
        [[scaling**2 * (a @ a.T), scaling * np.eye(r)], [scaling * np.eye(r), np.zeros((r, r))]]
    )
    return d, f, phi


def _top_eigen(
    d: np.ndarray, f: np.ndarray, phi: np.ndarray, k: int, dense_max: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenvalues (descending) and eigenvectors of diag(d) + F·Φ·Fᵀ."""
    size = d.size
    if size > dense_max and k < size - 1:
        operator = LinearOperator(
            (size, size),
            matvec=lambda x: d * x + f @ (phi @ (f.T @ x)),
            matmat=lambda x: d[:, None] * x + f @ (phi @ (f.T @ x)),
            dtype=np.float64,
        )
        start = np.random.default_rng(0).standard_normal(size)  # fixed: reproducible output
        try:
            values, vectors = eigsh(
                operator, k=k, which="LA", v0=start, ncv=min(size, max(2 * k + 1, 40)), tol=0
            )
        except ArpackNoConvergence:
            values = None
        if values is not None:
            order = np.argsort(values)[::-1]
            return values[order], vectors[:, order]
    dense = f @ phi @ f.T
    dense[np.diag_indices(size)] += d
    values, vectors = scipy.linalg.eigh(dense, subset_by_index=[size - k, size - 1])
    return values[::-1], vectors[:, ::-1]


def top_vectors(
    w0: np.ndarray,
    factors: BaseFactors,
    b: np.ndarray,
    a: np.ndarray,
    scaling: float,
    top_k: int = TOP_K,
    *,
    dense_max: int = DENSE_MAX,
) -> TopVectors:
    """Top-``top_k`` singular values of W0 + scaling·B·A and each left singular vector's
    largest |cos| with W0's left singular vectors (all p of them), in the stored orientation
    (``w0`` m × n, ``b`` m × r, ``a`` r × n). Needs ``factors = base_factors(w0)``; see the
    module docstring for why this is exact. A zero update returns W0's own vectors
    (similarity 1) without an eigenproblem."""
    p = factors.values.size
    k = min(top_k, p)
    if scaling == 0 or not np.any(b) or not np.any(a):
        return TopVectors(factors.values[:k].copy(), np.ones(k))
    d, f, phi = gram_in_base_basis(w0, factors, b, a, scaling)
    values, vectors = _top_eigen(d, f, phi, k, dense_max)
    similarity = np.abs(vectors[:p]).max(axis=0)
    return TopVectors(np.sqrt(np.clip(values, 0.0, None)), similarity)
