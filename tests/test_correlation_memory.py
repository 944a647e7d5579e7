"""The dense volume's memory-bounded steps equal their one-shot forms: pooling in row chunks (for
CUDA's 32-bit avg_pool2d) and the 1/sqrt(D) scale applied before the product."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import raft_engine.model.correlation as correlation


@pytest.mark.parametrize("shape", [(37, 1, 9, 13), (64, 1, 16, 16), (5, 1, 3, 2)])
def test_pooling_in_chunks_equals_pooling_at_once(monkeypatch, shape):
    corr = torch.randn(shape)
    expected = F.avg_pool2d(corr, kernel_size=2, stride=2)
    calls = []
    pool = F.avg_pool2d

    def counting_pool(tensor, **kwargs):
        calls.append(tensor.shape[0])
        return pool(tensor, **kwargs)

    monkeypatch.setattr(correlation.F, "avg_pool2d", counting_pool)
    rows, _, height, width = shape
    monkeypatch.setattr(correlation, "POOL_CHUNK_ELEMENTS", 3 * height * width + 1)  # 3 rows per chunk
    pooled = correlation.pool_level(corr)
    assert calls == [3] * (rows // 3) + ([rows % 3] if rows % 3 else [])
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


def test_pyramid_in_chunks_equals_the_pyramid_at_once(monkeypatch):
    corr = torch.randn(60, 1, 12, 10)
    expected = correlation.correlation_pyramid(corr, 4)
    monkeypatch.setattr(correlation, "POOL_CHUNK_ELEMENTS", 7 * 12 * 10)
    chunked = correlation.correlation_pyramid(corr, 4)
    assert [tuple(level.shape) for level in chunked] == [(60, 1, 12, 10), (60, 1, 6, 5), (60, 1, 3, 2), (60, 1, 1, 1)]
    for got, want in zip(chunked, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_volume_is_scaled_before_the_product():
    """<fmap1 / sqrt(D), fmap2> equals the published <fmap1, fmap2> / sqrt(D) to float32 rounding
    (exactly for D = 256, a power of four)."""
    torch.manual_seed(0)
    for dim in (128, 256):
        fmap1, fmap2 = torch.randn(2, 2, dim, 5, 6)
        published = torch.einsum("bdp,bdq->bpq", fmap1.flatten(2).double(), fmap2.flatten(2).double()) / math.sqrt(dim)
        corr = correlation.all_pairs_correlation(fmap1, fmap2).view(2, 30, 30)
        torch.testing.assert_close(corr.double(), published, rtol=1e-6, atol=1e-6)
