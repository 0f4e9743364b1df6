"""The spectrum of B·A from thin QRs equals a dense float64 SVD; the streaming reader is exact."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file
from safetensors.torch import save_file as save_torch

from gradience.audit.core import one_blas_thread
from gradience.audit.spectrum import cholesky_qr2_r, householder_r, lora_singular_values, r_factor
from gradience.audit.tensors import SafetensorsStream, bf16_bits_to_float32
from gradience.errors import GradienceError

SHAPES = [
    (1, 16, 24),
    (4, 96, 32),
    (8, 40, 300),
    (16, 64, 64),
    (32, 200, 48),
    (64, 256, 96),
    (64, 128, 448),
    (16, 8, 12),
]


def dense_singular_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Independent reference: SVD of the dense d_out×d_in product in float64, padded to r."""
    with one_blas_thread() or contextlib.nullcontext():  # threaded BLAS crawls on busy CI cores
        values = np.linalg.svd(b.astype(np.float64) @ a.astype(np.float64), compute_uv=False)
    out = np.zeros(a.shape[0])
    k = min(a.shape[0], values.size)
    out[:k] = values[:k]
    return out


@pytest.mark.parametrize("r,d_in,d_out", SHAPES)
def test_spectrum_matches_dense_svd_on_random_factors(r, d_in, d_out):
    rng = np.random.default_rng(r * 1000 + d_in)
    a = rng.standard_normal((r, d_in)).astype(np.float32)
    b = rng.standard_normal((d_out, r)).astype(np.float32)
    got = lora_singular_values(a, b)
    want = dense_singular_values(a, b)
    assert got.shape == (r,)
    assert np.all(np.diff(got) <= 0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * want[0])


@pytest.mark.parametrize(
    "r,k,d_in,d_out", [(8, 2, 64, 48), (32, 5, 96, 128), (64, 7, 256, 200), (64, 63, 128, 128)]
)
def test_planted_rank_gives_exactly_k_nonzero_values(r, k, d_in, d_out):
    rng = np.random.default_rng(k)
    a = rng.standard_normal((r, d_in))
    b = rng.standard_normal((d_out, k)) @ rng.standard_normal((k, r))  # rank(B·A) = k
    got = lora_singular_values(a, b)
    want = dense_singular_values(a, b)
    np.testing.assert_allclose(got[:k], want[:k], rtol=1e-10)
    assert np.all(got[k:] <= 1e-10 * got[0])
    assert got[k - 1] > 1e-3 * got[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("r,d_in,d_out", [(4, 96, 32), (64, 256, 96), (16, 64, 64)])
def test_spectrum_of_low_precision_weights_read_from_safetensors(tmp_path, dtype, r, d_in, d_out):
    generator = torch.Generator().manual_seed(r + d_in)
    a = torch.randn(r, d_in, generator=generator).to(dtype)
    b = (torch.randn(d_out, r, generator=generator) * 0.01).to(dtype)
    save_torch({"m.lora_A.weight": a, "m.lora_B.weight": b}, tmp_path / "w.safetensors")
    stream = SafetensorsStream(tmp_path / "w.safetensors")
    got = lora_singular_values(
        stream.read("m.lora_A.weight"), stream.read("m.lora_B.weight", order="F"), overwrite=True
    )
    stream.close()
    want = dense_singular_values(a.double().numpy(), b.double().numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * want[0])


def test_a_dense_product_is_never_formed():
    # B·A here would be 200000 × 200000 float64 = 320 GB: only the QR route can finish.
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 200_000)), rng.standard_normal((200_000, 4))
    got = lora_singular_values(a, b)
    # Same answer as the 4×4 Gram route: σ(B·A)² = eig((BᵀB)(AAᵀ)).
    want = np.sqrt(np.sort(np.linalg.eigvals((b.T @ b) @ (a @ a.T)).real)[::-1])
    np.testing.assert_allclose(got, want, rtol=1e-8)


def test_r_factor_is_the_r_of_a_qr():
    rng = np.random.default_rng(1)
    tall = rng.standard_normal((50, 6))
    r = r_factor(tall)
    assert np.allclose(np.tril(r, -1), 0)
    np.testing.assert_allclose(r.T @ r, tall.T @ tall, atol=1e-10)  # RᵀR = XᵀX
    original = tall.copy()
    r_factor(tall.T.copy().T, overwrite=False)
    np.testing.assert_array_equal(tall, original)


def test_cholesky_qr2_agrees_with_householder_when_well_conditioned():
    rng = np.random.default_rng(2)
    tall = rng.standard_normal((3000, 64)) * np.logspace(0, -3, 64)  # κ ≈ 1e3
    fast = cholesky_qr2_r(np.asfortranarray(tall))
    assert fast is not None
    reference = householder_r(np.asfortranarray(tall))
    np.testing.assert_allclose(
        np.abs(fast), np.abs(reference), atol=1e-12 * np.abs(reference).max()
    )


@pytest.mark.parametrize("condition", [1e7, 1e12])
def test_ill_conditioned_factors_fall_back_to_householder(condition):
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.standard_normal((500, 32)))
    v, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    values = np.logspace(0, -np.log10(condition), 32)
    tall = np.asfortranarray(u * values @ v)
    assert cholesky_qr2_r(tall.copy(order="F")) is None
    r = r_factor(tall)
    np.testing.assert_allclose(np.linalg.svd(r, compute_uv=False), values, rtol=1e-6, atol=1e-15)


def test_zero_update_has_a_zero_spectrum():
    assert np.all(lora_singular_values(np.ones((4, 10)), np.zeros((7, 4))) == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_stream_reads_every_dtype_exactly_like_safetensors(tmp_path, dtype):
    generator = torch.Generator().manual_seed(3)
    tensors = {
        "x": torch.randn(5, 7, generator=generator).to(dtype),
        "conv": torch.randn(3, 2, 2, 2, generator=generator).to(dtype),
        "scalar_row": torch.randn(1, 9, generator=generator).to(dtype),
    }
    save_torch(tensors, tmp_path / "t.safetensors", metadata={"format": "pt"})
    reference = load_file(tmp_path / "t.safetensors")
    stream = SafetensorsStream(tmp_path / "t.safetensors")
    assert set(stream.tensors()) == set(tensors)
    for key, value in reference.items():
        got = stream.read(key, order="F")
        assert got.dtype == np.float64 and got.shape == tuple(value.shape)
        np.testing.assert_array_equal(got, value.double().numpy())
    stream.close()


def test_bf16_bits_convert_exactly():
    values = torch.tensor([1.0, -2.5, 3.140625, 1e-30, -0.0, 65280.0]).to(torch.bfloat16)
    bits = values.view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_bits_to_float32(bits), values.float().numpy())


def test_stream_rejects_a_file_that_is_not_safetensors(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(GradienceError, match="not a safetensors file"):
        SafetensorsStream(tmp_path / "bad.safetensors")


def test_stream_rejects_integer_tensors(tmp_path):
    save_numpy({"ids": np.arange(4, dtype=np.int64)}, tmp_path / "i.safetensors")
    with pytest.raises(GradienceError, match="ids.*unsupported dtype I64"):
        SafetensorsStream(tmp_path / "i.safetensors")
