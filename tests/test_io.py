"""Flow files (.flo, KITTI 16-bit PNG), image reading, and the flow colour wheel."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from raft_engine import FlowEngine
from raft_engine.io import flow_to_color, read_flo, read_image, read_kitti_flow, write_flo, write_kitti_flow
from raft_engine.runtime.inputs import to_image_batch


@pytest.fixture
def flow():
    rng = np.random.default_rng(1)
    return (rng.standard_normal((37, 53, 2)) * 20).astype(np.float32)


def test_flo_round_trip(tmp_path, flow):
    write_flo(tmp_path / "a.flo", flow)
    np.testing.assert_array_equal(read_flo(tmp_path / "a.flo"), flow)
    write_flo(tmp_path / "b.flo", torch.from_numpy(flow).permute(2, 0, 1))
    assert (tmp_path / "b.flo").read_bytes() == (tmp_path / "a.flo").read_bytes()
    header = (tmp_path / "a.flo").read_bytes()[:12]
    assert header == b"PIEH" + struct.pack("<ii", 53, 37)


def test_flo_errors(tmp_path, flow):
    (tmp_path / "bad.flo").write_bytes(b"PIEX" + bytes(8))
    with pytest.raises(ValueError, match="not a Middlebury .flo file"):
        read_flo(tmp_path / "bad.flo")
    write_flo(tmp_path / "cut.flo", flow)
    data = (tmp_path / "cut.flo").read_bytes()
    (tmp_path / "cut.flo").write_bytes(data[:-8])
    with pytest.raises(ValueError, match="does not match the file size"):
        read_flo(tmp_path / "cut.flo")
    with pytest.raises(ValueError, match=r"expected a numpy array \(H, W, 2\)"):
        write_flo(tmp_path / "x.flo", flow.transpose(2, 0, 1))
    with pytest.raises(ValueError, match=r"expected a torch tensor \(2, H, W\)"):
        write_flo(tmp_path / "x.flo", torch.from_numpy(flow))


# A non-square 2x3 (HxW) field with 12 distinct values: u = 10 y + x + 1, v = u + 100. A writer and a
# reader that both store it transposed (3x2), or swap u and v, still round-trip; its bytes do not.
SMALL_FLOW = [[(10.0 * y + x + 1, 10.0 * y + x + 101) for x in range(3)] for y in range(2)]


def _flo_by_hand(rows) -> bytes:
    """The Middlebury layout, written out: "PIEH", int32 width, int32 height, then per row, per pixel,
    float32 u then v, all little-endian."""
    height, width = len(rows), len(rows[0])
    data = b"PIEH" + struct.pack("<ii", width, height)
    for row in rows:
        for u, v in row:
            data += struct.pack("<ff", u, v)
    return data


def test_flo_bytes_follow_the_middlebury_layout(tmp_path):
    assert struct.unpack("<f", b"PIEH")[0] == 202021.25  # the magic is that float
    expected = _flo_by_hand(SMALL_FLOW)
    assert len(expected) == 12 + 2 * 3 * 8
    write_flo(tmp_path / "small.flo", np.array(SMALL_FLOW, np.float32))
    assert (tmp_path / "small.flo").read_bytes() == expected
    # Bytes 12..20 are pixel (y=0, x=0), the next 8 pixel (y=0, x=1): row-major, u before v.
    assert struct.unpack("<ffff", expected[12:28]) == (1.0, 101.0, 2.0, 102.0)

    (tmp_path / "hand.flo").write_bytes(expected)
    read = read_flo(tmp_path / "hand.flo")
    assert read.shape == (2, 3, 2) and read.dtype == np.float32
    np.testing.assert_array_equal(read[1, 2], [13.0, 113.0])  # last row, last column
    np.testing.assert_array_equal(read[0, 1], [2.0, 102.0])
    np.testing.assert_array_equal(read, np.array(SMALL_FLOW, np.float32))


def test_flo_header_that_promises_more_than_the_file_holds(tmp_path):
    # The header says 3x2 (WxH) = 6 pixels, 48 bytes of values; the file holds 5 pixels (40 bytes).
    (tmp_path / "short.flo").write_bytes(_flo_by_hand(SMALL_FLOW)[:-8])
    with pytest.raises(ValueError, match=r"header says 3x2 \(WxH\), which does not match the file size 52"):
        read_flo(tmp_path / "short.flo")
    # Fewer bytes than a header.
    (tmp_path / "stub.flo").write_bytes(b"PIEH" + struct.pack("<i", 3))
    with pytest.raises(ValueError, match=r"too short for a .flo file \(8 bytes\)"):
        read_flo(tmp_path / "stub.flo")
    # A negative size cannot be read as any number of pixels.
    (tmp_path / "negative.flo").write_bytes(b"PIEH" + struct.pack("<ii", -3, -2) + bytes(48))
    with pytest.raises(ValueError, match=r"header says -3x-2 \(WxH\)"):
        read_flo(tmp_path / "negative.flo")


def test_kitti_round_trip(tmp_path, flow):
    valid = np.random.default_rng(2).random(flow.shape[:2]) > 0.3
    write_kitti_flow(tmp_path / "f.png", flow, valid)
    decoded, decoded_valid = read_kitti_flow(tmp_path / "f.png")
    np.testing.assert_array_equal(decoded_valid, valid)
    quantised = np.rint(flow * 64) / 64
    np.testing.assert_array_equal(decoded[valid], quantised[valid])
    assert not decoded[~valid].any()
    # Pillow sees a 16-bit RGB PNG of the right size.
    with Image.open(tmp_path / "f.png") as image:
        assert image.size == (53, 37)


def test_kitti_range_and_validity(tmp_path, flow):
    big = flow.copy()
    big[0, 0, 0] = 600.0
    with pytest.raises(ValueError, match="1 valid pixels have flow beyond the KITTI PNG range"):
        write_kitti_flow(tmp_path / "f.png", big)
    valid = np.ones(flow.shape[:2], bool)
    valid[0, 0] = False
    big[0, 0, 1] = np.nan
    write_kitti_flow(tmp_path / "f.png", big, valid)  # out of range or NaN where invalid: fine
    with pytest.raises(ValueError, match="NaN or Inf at valid pixels"):
        write_kitti_flow(tmp_path / "f.png", big)
    with pytest.raises(ValueError, match="valid mask has shape"):
        write_kitti_flow(tmp_path / "f.png", flow, valid[1:])


def _png_with_filters(pixels: np.ndarray, filter_types: list[int]) -> bytes:
    """A 16-bit RGB PNG whose rows use the given filter types, filtered byte by byte (plain loops,
    independent of the reader's vectorised unfiltering)."""
    height, width, _ = pixels.shape
    rows = pixels.astype(">u2").view(np.uint8).reshape(height, width * 6).astype(int)
    bpp = 6
    raw = bytearray()
    for r in range(height):
        kind = filter_types[r % len(filter_types)]
        raw.append(kind)
        for i in range(width * bpp):
            a = rows[r, i - bpp] if i >= bpp else 0
            b = rows[r - 1, i] if r > 0 else 0
            c = rows[r - 1, i - bpp] if r > 0 and i >= bpp else 0
            if kind == 0:
                predicted = 0
            elif kind == 1:
                predicted = a
            elif kind == 2:
                predicted = b
            elif kind == 3:
                predicted = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predicted = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            raw.append((rows[r, i] - predicted) % 256)

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    compressed = zlib.compress(bytes(raw))
    half = len(compressed) // 2  # two IDAT chunks, as encoders may write
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", compressed[:half])
        + chunk(b"IDAT", compressed[half:])
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("filter_types", [[1], [2], [3], [4], [0, 1, 2, 3, 4, 4, 3]])
def test_kitti_reader_undoes_every_png_filter(tmp_path, filter_types):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 65536, (9, 11, 3)).astype(np.uint16)
    pixels[..., 2] = rng.integers(0, 2, (9, 11))
    (tmp_path / "f.png").write_bytes(_png_with_filters(pixels, filter_types))
    flow, valid = read_kitti_flow(tmp_path / "f.png")
    np.testing.assert_array_equal(valid, pixels[..., 2] > 0)
    expected = (pixels[..., :2].astype(np.float32) - 2**15) / 64
    np.testing.assert_array_equal(flow[valid], expected[valid])


def test_kitti_reader_errors(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb8.png")
    with pytest.raises(ValueError, match="16-bit RGB; this one has bit depth 8"):
        read_kitti_flow(tmp_path / "rgb8.png")
    (tmp_path / "text.png").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a PNG file"):
        read_kitti_flow(tmp_path / "text.png")
    write_kitti_flow(tmp_path / "ok.png", np.zeros((4, 4, 2), np.float32))
    data = bytearray((tmp_path / "ok.png").read_bytes())
    data[40] ^= 0xFF  # inside the IDAT chunk
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt PNG chunk"):
        read_kitti_flow(tmp_path / "bad.png")


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png16(width, height, raw: bytes, interlace=0, with_header=True, with_data=True) -> bytes:
    """A 16-bit RGB PNG (colour type 2) around already filtered rows `raw`, chunks with correct CRCs."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, interlace))
    return (
        b"\x89PNG\r\n\x1a\n"
        + (header if with_header else b"")
        + (_chunk(b"IDAT", zlib.compress(raw)) if with_data else b"")
        + _chunk(b"IEND", b"")
    )


# 2x2 pixels, filter type 0 (none): each row is its filter byte, then 2 pixels x 3 channels x 2 bytes.
# Pixel (y, x) stores (2^15 + 64 (y + 1), 2^15 - 64 (x + 1), 1): flow u = y + 1, v = -(x + 1), valid.
_ROWS = [[(2**15 + 64 * (y + 1), 2**15 - 64 * (x + 1), 1) for x in range(2)] for y in range(2)]


def _raw_rows(filter_types=(0, 0)) -> bytes:
    return b"".join(
        bytes([kind]) + b"".join(struct.pack(">HHH", *pixel) for pixel in row)
        for kind, row in zip(filter_types, _ROWS, strict=True)
    )


def test_hand_built_kitti_png_reads(tmp_path):
    # The builder the error tests below use makes a readable file when nothing is wrong with it.
    (tmp_path / "ok.png").write_bytes(_png16(2, 2, _raw_rows()))
    flow, valid = read_kitti_flow(tmp_path / "ok.png")
    assert valid.all()
    np.testing.assert_array_equal(flow, [[[1, -1], [1, -2]], [[2, -1], [2, -2]]])


def test_kitti_png_with_unknown_filter_type(tmp_path):
    (tmp_path / "f.png").write_bytes(_png16(2, 2, _raw_rows(filter_types=(0, 5))))  # PNG knows types 0..4
    with pytest.raises(ValueError, match="invalid PNG filter type 5"):
        read_kitti_flow(tmp_path / "f.png")


@pytest.mark.parametrize("missing", ["IDAT", "IHDR"])
def test_kitti_png_without_image_data(tmp_path, missing):
    png = _png16(2, 2, _raw_rows(), with_header=missing != "IHDR", with_data=missing != "IDAT")
    (tmp_path / "f.png").write_bytes(png)
    with pytest.raises(ValueError, match="PNG without image data"):
        read_kitti_flow(tmp_path / "f.png")


def test_interlaced_kitti_png(tmp_path):
    # The data has the size of the non-interlaced image, so only the interlace flag can tell it apart:
    # read as plain rows it would decode to wrong pixels without a word.
    (tmp_path / "f.png").write_bytes(_png16(2, 2, _raw_rows(), interlace=1))
    with pytest.raises(ValueError, match="interlaced PNGs are not supported"):
        read_kitti_flow(tmp_path / "f.png")


@pytest.mark.parametrize("stream", ["cut short", "not deflate"])
def test_kitti_png_with_corrupt_image_data(tmp_path, stream):
    """Valid chunk CRCs around a broken deflate stream: one ValueError naming the file, not zlib's error."""
    compressed = zlib.compress(_raw_rows())
    payload = compressed[: len(compressed) // 2] if stream == "cut short" else b"\x00" * len(compressed)
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", payload) + _chunk(b"IEND", b"")
    (tmp_path / "f.png").write_bytes(png)
    with pytest.raises(ValueError, match=r"f\.png: corrupt PNG image data"):
        read_kitti_flow(tmp_path / "f.png")


@pytest.mark.parametrize("change", ["one byte short", "one row more"])
def test_kitti_png_data_size_differs_from_its_header(tmp_path, change):
    raw = _raw_rows()  # 2 rows of 1 + 12 bytes
    raw = raw[:-1] if change == "one byte short" else raw + raw[:13]
    (tmp_path / "f.png").write_bytes(_png16(2, 2, raw))
    with pytest.raises(ValueError, match="PNG data size does not match its 2x2 header"):
        read_kitti_flow(tmp_path / "f.png")


def _palette_image() -> Image.Image:
    image = Image.new("P", (4, 3), 1)  # every pixel: palette entry 1
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * (3 * 254))
    return image


def test_palette_image_with_transparency_is_refused(official_small):
    image = _palette_image()
    batch = to_image_batch(image)  # without transparency: converted through its palette
    torch.testing.assert_close(batch, torch.tensor([200.0, 100.0, 50.0]).view(1, 3, 1, 1).expand(1, 3, 3, 4))
    image.info["transparency"] = 0  # palette entry 0 is transparent
    with pytest.raises(ValueError, match="frame is a palette image with transparency; convert it to RGB first"):
        to_image_batch(image, "frame")
    engine = FlowEngine(official_small, device="cpu")
    with pytest.raises(ValueError, match="image1 is a palette image with transparency"):
        engine.estimate(image, _palette_image())


def test_five_dimensional_inputs_are_refused(official_small):
    tensor = torch.zeros(1, 1, 3, 8, 8, dtype=torch.uint8)  # a batch of batches
    message = r"expected a tensor \(H, W\), \(C, H, W\) or \(B, C, H, W\); got shape \(1, 1, 3, 8, 8\)"
    with pytest.raises(ValueError, match="image: " + message):
        to_image_batch(tensor)
    with pytest.raises(ValueError, match=r"got shape \(1, 1, 8, 8, 3\)"):
        to_image_batch(np.zeros((1, 1, 8, 8, 3), np.uint8))
    engine = FlowEngine(official_small, device="cpu")
    with pytest.raises(ValueError, match="image2: " + message):
        engine.estimate(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), tensor)


def test_read_image_modes(tmp_path):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(rgb[..., :1], 3, axis=2))
    opaque = np.concatenate([rgb, np.full((10, 12, 1), 255, np.uint8)], axis=2)
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(read_image(tmp_path / "opaque.png"), rgb)
    opaque[2, 3, 3] = 0
    Image.fromarray(opaque).save(tmp_path / "transparent.png")
    with pytest.raises(ValueError, match="transparent pixels"):
        read_image(tmp_path / "transparent.png")
    Image.fromarray(rng.integers(0, 65536, (5, 5)).astype(np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(ValueError, match="16-bit"):
        read_image(tmp_path / "deep.png")
    with pytest.raises(FileNotFoundError, match="no such image file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="is not an image file Pillow can read"):
        read_image(tmp_path / "junk.png")


def test_read_image_refuses_16_bit_colour(tmp_path):
    pixels = np.random.default_rng(5).integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    (tmp_path / "rgb16.png").write_bytes(_png_with_filters(pixels, [0]))
    with pytest.raises(ValueError, match="16-bit"):
        read_image(tmp_path / "rgb16.png")


def test_colour_wheel_anchors():
    # Right is red, left is cyan-blue (wheel entry 27), down (+v) is yellow (between entries 13 and 14).
    flow = np.array([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]], np.float32)
    colours = flow_to_color(flow, max_magnitude=1.0)
    np.testing.assert_array_equal(colours[0], [[255, 0, 0], [0, 209, 255], [255, 229, 0], [255, 255, 255]])
    # Half the maximum: halfway to white. Beyond the maximum: darkened by 0.75.
    half = flow_to_color(flow, max_magnitude=2.0)
    np.testing.assert_array_equal(half[0, 0], [255, 127, 127])
    beyond = flow_to_color(flow, max_magnitude=0.5)
    np.testing.assert_array_equal(beyond[0, 0], [191, 0, 0])


def test_colour_normalisation_and_forms(flow):
    auto = flow_to_color(flow)
    magnitude = np.sqrt((flow**2).sum(axis=2)).max()
    np.testing.assert_array_equal(auto, flow_to_color(flow, max_magnitude=magnitude + 1e-5))
    np.testing.assert_array_equal(auto, flow_to_color(torch.from_numpy(flow).permute(2, 0, 1)))
    assert auto.dtype == np.uint8 and auto.shape == (37, 53, 3)


def test_colour_errors(flow):
    bad = flow.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN or Inf values"):
        flow_to_color(bad)
    with pytest.raises(ValueError, match="max_magnitude must be a positive number"):
        flow_to_color(flow, max_magnitude=0)
    with pytest.raises(TypeError, match="expected a numpy array"):
        flow_to_color([[0, 0]])
