"""The PyTorch correlation parts in pieces: the chunked loops give the numbers of the unchunked ones.

The chunk sizes (`BUILD_CHUNK_BYTES`, `REFERENCE_CHUNK_BYTES`: 256 MiB) are never reached by the test
grids, so these tests shrink them to a few rows or cells, the last chunk partial.
"""

from __future__ import annotations

import pytest
import torch

import raft_engine.model.correlation as correlation
from raft_engine.model.correlation import (
    DenseCorrelation,
    all_pairs_correlation,
    corr_lookup_ref,
    corr_ondemand_gather,
    corr_ondemand_ref,
    correlation_pyramid,
    pooled_pyramid,
)

# 2 images of 9 x 13 cells: 117 each, so that chunks of 5 or 64 rows or cells leave a partial last one.
BATCH, DIM, HEIGHT, WIDTH = 2, 32, 9, 13
CELLS = HEIGHT * WIDTH


def feature_maps(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (BATCH, DIM, HEIGHT, WIDTH)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def correspondences(seed: int) -> torch.Tensor:
    """(B, 2, H, W) float32: the identity moved by a few cells, a tenth of the cells far outside."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(
        torch.arange(HEIGHT, dtype=torch.float32), torch.arange(WIDTH, dtype=torch.float32), indexing="ij"
    )
    coords = torch.stack([xs, ys]).expand(BATCH, 2, HEIGHT, WIDTH) + 3 * torch.randn(
        BATCH, 2, HEIGHT, WIDTH, generator=generator
    )
    far = torch.rand(BATCH, 1, HEIGHT, WIDTH, generator=generator) < 0.1
    return torch.where(far, coords + 100, coords)


# ------------------------------------------------------------------------------------------------
# DenseCorrelation.build in half precision: float32 row chunks of the volume, each rounded to storage.


@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5])
def test_half_precision_volume_built_in_row_chunks(storage, rows, monkeypatch):
    fmap1, fmap2 = feature_maps(rows)
    part = DenseCorrelation(levels=4, radius=4, storage_dtype=storage)  # levels 9x13, 4x6, 2x3, 1x1
    assert 4 * BATCH * CELLS * CELLS <= correlation.BUILD_CHUNK_BYTES  # by default: one chunk
    whole = part.build(fmap1, fmap2)
    monkeypatch.setattr(correlation, "BUILD_CHUNK_BYTES", rows * 4 * BATCH * CELLS)  # `rows` float32 rows
    chunked = part.build(fmap1, fmap2)
    exact = correlation_pyramid(all_pairs_correlation(fmap1, fmap2), 4)  # float32

    finfo = torch.finfo(storage)
    scale = float(exact[0].abs().max())
    assert [level.dtype for level in chunked] == [storage] * 4
    for level, (got, unchunked, expected) in enumerate(zip(chunked, whole, exact, strict=True)):
        assert got.shape == expected.shape
        if level == 0:
            # A chunk's float32 products may differ from the whole matmul's in the last bit (measured with
            # float16 and 1 row: 0.12 eps * scale apart), so the stored values by one unit of the storage
            # format at most: eps relative, or the subnormal spacing (tiny * eps) near zero.
            for reference in (unchunked, expected.to(storage)):
                torch.testing.assert_close(got, reference, rtol=finfo.eps, atol=finfo.tiny * finfo.eps)
        else:
            # Each 2x2 average of rounded values is rounded again: one more unit at most per level, at the
            # volume's scale. Measured: up to 0.19 eps * scale, against (level + 1) eps * scale allowed.
            atol = (level + 1) * finfo.eps * scale
            torch.testing.assert_close(got, unchunked, rtol=0, atol=atol)
            torch.testing.assert_close(got.float(), expected, rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------------
# corr_ondemand_ref: the window samples of fmap2 are taken for a chunk of cells at a time.


@pytest.mark.parametrize("radius", [3, 4])
@pytest.mark.parametrize("cells_per_chunk", [1, 5, 64])
def test_ondemand_reference_in_chunks_of_cells(radius, cells_per_chunk, monkeypatch):
    fmap1, fmap2 = feature_maps(radius)
    coords = correspondences(radius)
    features1 = fmap1.permute(0, 2, 3, 1).contiguous()
    pyramid = [level.permute(0, 2, 3, 1).contiguous() for level in pooled_pyramid(fmap2, 3)]  # 9x13, 4x6, 2x3
    window = (2 * radius + 1) ** 2
    whole = corr_ondemand_ref(features1, pyramid, coords, radius)  # 117 cells: one chunk by default

    def chunk_cells(itemsize: int) -> None:
        monkeypatch.setattr(correlation, "REFERENCE_CHUNK_BYTES", cells_per_chunk * BATCH * DIM * window * itemsize)

    chunk_cells(4)
    chunked = corr_ondemand_ref(features1, pyramid, coords, radius)
    # The same dot products over 32 channels, summed in another order where a chunk's shape picks
    # another matmul path: measured up to 0.83 eps * scale apart (1-cell chunks; 5 and 64: equal),
    # 4 eps * scale allowed.
    scale = float(whole.abs().max())
    torch.testing.assert_close(chunked, whole, rtol=0, atol=4 * torch.finfo(torch.float32).eps * scale)

    # In float64 the chunked on-demand reference is the dense lookup in the all-pairs volume's pyramid
    # (both pooled in float64: the float32 pyramid above is 6e-8 off at levels 1 and 2).
    chunk_cells(8)
    pyramid64 = [level.permute(0, 2, 3, 1).contiguous() for level in pooled_pyramid(fmap2.double(), 3)]
    chunked64 = corr_ondemand_ref(features1.double(), pyramid64, coords.double(), radius)
    volume = correlation_pyramid(all_pairs_correlation(fmap1.double(), fmap2.double()), 3)
    dense64 = corr_lookup_ref(volume, coords.double(), radius)
    assert dense64.dtype == torch.float64 and torch.isfinite(dense64).all()
    torch.testing.assert_close(chunked64, dense64, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# corr_ondemand_gather: the on-demand lookup in ONNX's standard operators (the on-demand export's path).


def awkward_coords(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(B, 2, H, W) float32: near the identity, with a fifth of the cells on integer corners, the edges of
    every level, just outside them, or thousands of cells away."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    coords = torch.stack([xs, ys]).expand(batch, 2, height, width) + 4 * torch.randn(
        batch, 2, height, width, generator=generator
    )
    special = torch.tensor([0.0, -1.0, -0.5, 8.0, width - 1.0, width, height - 1.0, height, -3000.0, 2500.0])
    picks = special[torch.randint(len(special), coords.shape, generator=generator)]
    return torch.where(torch.rand(coords.shape, generator=generator) < 0.2, picks, coords)


@pytest.mark.parametrize("batch, height, width, radius", [(2, 17, 23, 4), (1, 55, 128, 4), (3, 16, 20, 3)])
def test_gather_lookup_equals_the_dense_lookup(batch, height, width, radius):
    generator = torch.Generator().manual_seed(height * width + radius)
    fmap1, fmap2 = (torch.randn(batch, 64, height, width, generator=generator) for _ in range(2))
    coords = awkward_coords(batch, height, width, seed=radius)
    features1 = fmap1.permute(0, 2, 3, 1).contiguous()
    pyramid = [level.permute(0, 2, 3, 1).contiguous() for level in pooled_pyramid(fmap2, 4)]
    # Judge: the published dense lookup in float64.
    judge = corr_lookup_ref(
        correlation_pyramid(all_pairs_correlation(fmap1.double(), fmap2.double()), 4), coords.double(), radius
    )
    gathered = corr_ondemand_gather(features1, pyramid, coords, radius)
    reference = corr_ondemand_ref(features1, pyramid, coords, radius)
    assert gathered.shape == judge.shape == (batch, 4 * (2 * radius + 1) ** 2, height, width)
    assert gathered.dtype == torch.float32
    gathered_error = float((gathered.double() - judge).abs().max())
    reference_error = float((reference.double() - judge).abs().max())
    # As exact as the on-demand reference: measured 1.1e-6..1.4e-6 against its 5.1e-6..2.3e-5.
    assert gathered_error <= 2 * reference_error + 1e-6 * float(judge.abs().max()), (gathered_error, reference_error)
    # And in float64 (features pooled in float64 too) it is the dense lookup, to rounding.
    pyramid64 = [level.permute(0, 2, 3, 1) for level in pooled_pyramid(fmap2.double(), 4)]
    gathered64 = corr_ondemand_gather(features1.double(), pyramid64, coords.double(), radius)
    torch.testing.assert_close(gathered64, judge, rtol=0, atol=1e-12)
