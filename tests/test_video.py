"""Video in and out: read_video, VideoWriter, and `raft-engine flow` on a video, a folder or a list of
frames written as an H.264 video and .flo / KITTI PNG files; bad input is one clear error and leaves
what was written valid."""

from __future__ import annotations

import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import rel_error
from PIL import Image
from synthetic import synthetic_state_dict

from raft_engine import FlowEngine, load_model
from raft_engine.cli import main
from raft_engine.io import (
    VideoWriter,
    flow_to_color,
    read_flo,
    read_kitti_flow,
    read_video,
    video_codec,
    write_flo,
    write_kitti_flow,
    write_video,
)
from raft_engine.scenes import generate_sequence

av = pytest.importorskip("av", reason="PyAV (the [video] extra) is not installed")

HEIGHT, WIDTH, FRAMES, FPS = 128, 160, 6, 24


@pytest.fixture(scope="module")
def clip():
    return generate_sequence(7, frames=FRAMES, height=HEIGHT, width=WIDTH)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, clip):
    """A 6-frame 128x160 H.264 video of a generated sequence at 24 fps, and a RAFT-small checkpoint."""
    folder = tmp_path_factory.mktemp("video")
    assert write_video(folder / "clip.mp4", clip.frames, fps=FPS) == FRAMES
    torch.save(synthetic_state_dict("official_small"), folder / "raft-small.pth")
    return folder


@pytest.fixture(scope="module")
def decoded(workdir) -> list[np.ndarray]:
    return list(read_video(workdir / "clip.mp4"))


@pytest.fixture(scope="module")
def engine(workdir) -> FlowEngine:
    return FlowEngine(load_model(workdir / "raft-small.pth"), device="cpu")


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code, err) -> str:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raft-engine: error: "), err
    return lines[0]


def _difference(image: np.ndarray, other: np.ndarray) -> float:
    """Mean absolute difference in grey levels, over `other`'s size."""
    height, width = other.shape[:2]
    return float(np.abs(image[:height, :width].astype(np.int16) - other).mean())


def _flow_args(workdir, *args):
    return ["flow", *args, "--weights", workdir / "raft-small.pth", "--iters", 2, "--device", "cpu"]


# ------------------------------------------------------------------------------------------------
# Reading and writing video


def test_the_wheel_writes_h264():
    """The issue asks for H.264: PyAV's wheels bundle FFmpeg with libx264 (the MPEG-4 fallback is for
    FFmpeg builds without it)."""
    assert video_codec() == "libx264"


def test_read_video_reports_the_container_and_decodes_the_frames(workdir, decoded, clip):
    video = read_video(workdir / "clip.mp4")
    assert (video.width, video.height, video.codec) == (WIDTH, HEIGHT, "h264")
    assert video.fps == Fraction(FPS) and video.frame_count == FRAMES
    assert len(decoded) == FRAMES
    for k, frame in enumerate(decoded):
        assert frame.shape == (HEIGHT, WIDTH, 3) and frame.dtype == np.uint8
        # H.264 at crf 18 in yuv420p (chroma at half resolution) on these noisy textures: measured 13-16
        # grey levels of mean difference from its source frame; the next frame differs by 40.
        assert _difference(frame, clip.frames[k]) < 20
        assert np.argmin([_difference(frame, source) for source in clip.frames]) == k
    # Each iteration decodes from the start; an abandoned one closes the file.
    first_two = [frame for frame, _ in zip(video, range(2), strict=False)]
    np.testing.assert_array_equal(first_two[1], decoded[1])
    assert sum(1 for _ in video) == FRAMES


def _encode(path, frames, codec: str, options: dict[str, str], gop: int, b_frames: int) -> None:
    """Frames into a file with keyframes every `gop` frames and B-frames (decode order differs from
    presentation order), as long videos from cameras and editors come."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = b_frames
        for picture in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())


@pytest.mark.parametrize("name, codec, options", [
    ("gop.mp4", "libx264", {"crf": "18", "bf": "2", "keyint": "4", "min-keyint": "4", "sc_threshold": "0"}),
    ("gop.mkv", "mpeg4", {"qscale": "3"}),
])  # fmt: skip
def test_frames_from_a_start_seek_to_the_keyframe_before_it(tmp_path, name, codec, options):
    frames = generate_sequence(3, frames=13, height=64, width=96).frames
    _encode(tmp_path / name, frames, codec, options, gop=4, b_frames=2)
    video = read_video(tmp_path / name)
    everything = list(video.frames())
    assert len(everything) == 13 == video.count_frames()
    seek = video._keyframe_before(9)
    assert seek is not None and seek[1][seek[0]] in (8, 9), seek  # the keyframe before frame 9, not frame 0
    for start, stop in ((0, 3), (1, 5), (4, 8), (5, 13), (9, None), (12, 13), (13, None)):
        got = list(video.frames(start, stop))
        assert len(got) == len(everything[start:stop]), (start, stop)
        for k, (frame, expected) in enumerate(zip(got, everything[start:stop], strict=True)):
            np.testing.assert_array_equal(frame, expected, err_msg=f"frame {start + k} from {start}")


def test_sequence_of_a_video_equals_estimate_on_its_frames(workdir, decoded, engine):
    results = list(engine.sequence(read_video(workdir / "clip.mp4"), iters=2, batch_size=3))
    assert len(results) == FRAMES - 1
    for k, result in enumerate(results):
        expected = engine.estimate(decoded[k], decoded[k + 1], iters=2)
        assert rel_error(result.flow, expected.flow) <= 1e-5, k


def test_odd_sizes_are_padded_to_even_and_fps_kept(tmp_path):
    frames = generate_sequence(0, frames=3, height=33, width=47).frames
    assert write_video(tmp_path / "odd.mp4", frames, fps=Fraction(30000, 1001)) == 3
    video = read_video(tmp_path / "odd.mp4")
    assert (video.height, video.width, video.frame_count) == (34, 48, 3)  # yuv420p needs even sides
    assert video.fps == Fraction(30000, 1001)  # NTSC kept exact
    first = next(iter(video))
    # The added row and column copy their neighbours: measured 0.6 and 3.1 grey levels of difference,
    # against 13 between the frame and its source (compression) and 16 between consecutive frames.
    assert _difference(first[-1], first[-2]) < 5 and _difference(first[:, -1], first[:, -2]) < 5
    assert np.argmin([_difference(first, source) for source in frames]) == 0


def test_a_writer_closed_by_an_error_leaves_a_playable_video(tmp_path):
    frames = generate_sequence(0, frames=5, height=64, width=64).frames
    with pytest.raises(RuntimeError, match="stopped"):
        with VideoWriter(tmp_path / "partial.mp4", fps=10) as writer:
            for k, frame in enumerate(frames):
                if k == 3:
                    raise RuntimeError("stopped")
                writer.write(frame)
    video = read_video(tmp_path / "partial.mp4")
    assert video.frame_count == 3 and len(list(video)) == 3
    with VideoWriter(tmp_path / "none.mp4") as writer:
        pass  # no frame: no file
    assert not (tmp_path / "none.mp4").exists()
    with VideoWriter(tmp_path / "sizes.mp4") as writer:
        writer.write(frames[0])
        with pytest.raises(ValueError, match=r"frame 1 is 32x64 \(HxW\), the video is 64x64"):
            writer.write(frames[1][:32])
    with pytest.raises(ValueError, match="frame rate must be a positive number"):
        VideoWriter(tmp_path / "x.mp4", fps=0)


def test_unreadable_videos_are_one_clear_error(tmp_path, workdir):
    with pytest.raises(FileNotFoundError, match="no such video file"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video " * 100)
    with pytest.raises(ValueError, match="junk.mp4 is not a video PyAV can read"):
        read_video(tmp_path / "junk.mp4")
    # Cut short: MP4's index is written last, so the file cannot be opened at all.
    data = (workdir / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.mp4 is not a video PyAV can read"):
        read_video(tmp_path / "cut.mp4")


def test_a_missing_decoder_package_names_the_extra(monkeypatch, tmp_path, workdir, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(ModuleNotFoundError, match=r'pip install -e "\.\[video\]"'):
        read_video(workdir / "clip.mp4")
    code, _, err = _run(_flow_args(workdir, workdir / "clip.mp4", "-o", tmp_path / "flow.mp4"), capsys)
    assert "flow needs av: pip install av (PyAV, the project's [video] extra" in _one_line_error(code, err)


def test_flow_files_are_replaced_whole(tmp_path, monkeypatch):
    """An interrupted write (here, Ctrl-C at the rename) leaves the previous file, never a truncated one."""
    import raft_engine.io.files

    old = np.ones((4, 5, 2), np.float32)
    write_flo(tmp_path / "f.flo", old)
    write_kitti_flow(tmp_path / "f.png", old)

    def interrupted(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(raft_engine.io.files.os, "replace", interrupted)
    for write, name in ((write_flo, "f.flo"), (write_kitti_flow, "f.png")):
        with pytest.raises(KeyboardInterrupt):
            write(tmp_path / name, np.zeros((40, 50, 2), np.float32))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_flo(tmp_path / "f.flo"), old)
    np.testing.assert_array_equal(read_kitti_flow(tmp_path / "f.png")[0], old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.flo", "f.png"]  # no partial file left


# ------------------------------------------------------------------------------------------------
# The command line


def test_flow_of_a_video(workdir, decoded, engine, tmp_path, capsys):
    out, flo, kitti = tmp_path / "flow.mp4", tmp_path / "flo", tmp_path / "kitti"
    args = _flow_args(workdir, workdir / "clip.mp4", "-o", out, "--flo-dir", flo, "--png-dir", kitti)
    code, stdout, err = _run([*args, "--batch-size", 2, "--max-magnitude", 8], capsys)
    assert code == 0, err
    assert f"wrote {FRAMES - 1} flow field(s) of {HEIGHT}x{WIDTH}" in stdout and "pairs/s" in stdout
    video = read_video(out)
    assert (video.codec, video.width, video.height) == ("h264", WIDTH, HEIGHT)
    assert video.fps == Fraction(FPS) and video.frame_count == FRAMES - 1
    names = [f"{k:06d}" for k in range(FRAMES - 1)]  # after the pair's first frame
    assert sorted(p.name for p in flo.iterdir()) == [f"{n}.flo" for n in names]
    assert sorted(p.name for p in kitti.iterdir()) == [f"{n}.png" for n in names]
    for k, (name, picture) in enumerate(zip(names, video, strict=True)):
        expected = engine.estimate(decoded[k], decoded[k + 1], iters=2).flow[0].permute(1, 2, 0).numpy()
        flow = read_flo(flo / f"{name}.flo")
        assert rel_error(flow, expected) <= 1e-5, name
        from_png, valid = read_kitti_flow(kitti / f"{name}.png")
        assert valid.all() and np.abs(from_png - flow).max() <= 0.5 / 64 + 1e-6  # KITTI's 1/64 px steps
        # The video shows the colour-coded flow (lossy: measured 1-3 grey levels of mean difference).
        assert np.abs(picture.astype(np.int16) - flow_to_color(flow, 8)).mean() < 6, name


def test_start_end_every_select_the_frames(workdir, decoded, engine, tmp_path, capsys):
    out, flo = tmp_path / "flow.mkv", tmp_path / "flo"
    args = _flow_args(workdir, workdir / "clip.mp4", "-o", out, "--flo-dir", flo)
    code, _, err = _run([*args, "--start", 1, "--end", 6, "--every", 2, "--warm-start"], capsys)
    assert code == 0, err
    # Frames 1, 3, 5: pairs 1 -> 3 and 3 -> 5, at half the frame rate.
    assert sorted(p.name for p in flo.iterdir()) == ["000001.flo", "000003.flo"]
    video = read_video(out)
    assert video.fps == Fraction(FPS, 2) and len(list(video)) == 2
    first = engine.estimate(decoded[1], decoded[3], iters=2)
    from raft_engine.model.warm_start import forward_interpolate

    second = engine.estimate(decoded[3], decoded[5], iters=2, flow_init=forward_interpolate(first.flow_low))
    assert rel_error(read_flo(flo / "000003.flo"), second.flow[0].permute(1, 2, 0).numpy()) <= 1e-5


def test_a_folder_of_frames_takes_the_same_path(workdir, engine, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = generate_sequence(8, frames=4, height=HEIGHT, width=WIDTH).frames
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"f{k}.png")
    out = tmp_path / "flow.mp4"
    code, _, err = _run([*_flow_args(workdir, folder, "-o", out, "--flo-dir", tmp_path / "flo"), "--fps", 12.5], capsys)
    assert code == 0, err
    video = read_video(out)
    assert video.fps == Fraction(25, 2) and video.frame_count == 3
    assert sorted(p.name for p in (tmp_path / "flo").iterdir()) == ["f0.flo", "f1.flo", "f2.flo"]
    expected = engine.estimate(frames[2], frames[3], iters=2).flow[0].permute(1, 2, 0).numpy()
    assert rel_error(read_flo(tmp_path / "flo" / "f2.flo"), expected) <= 1e-5
    # Two image files and a video output: a sequence of one pair, at the default 30 fps.
    code, _, err = _run(_flow_args(workdir, folder / "f0.png", folder / "f1.png", "-o", tmp_path / "one.mp4"), capsys)
    assert code == 0, err
    one = read_video(tmp_path / "one.mp4")
    assert one.frame_count == 1 and one.fps == 30


def test_a_frame_of_another_size_keeps_what_was_written(workdir, tmp_path, capsys):
    """The error names the frame; the flows before it are all written, the video plays, each .flo is whole."""
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = list(generate_sequence(9, frames=5, height=HEIGHT, width=WIDTH).frames)
    frames[4] = frames[4][:, :-8]
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"f{k}.png")
    out, flo = tmp_path / "flow.mp4", tmp_path / "flo"
    code, _, err = _run([*_flow_args(workdir, folder, "-o", out, "--flo-dir", flo), "--batch-size", 2], capsys)
    assert f"f4.png is {HEIGHT}x{WIDTH - 8} (HxW), but {folder / 'f0.png'} is {HEIGHT}x{WIDTH}" in _one_line_error(
        code, err
    )
    assert read_video(out).frame_count == 3 and len(list(read_video(out))) == 3
    assert sorted(p.name for p in flo.iterdir()) == ["f0.flo", "f1.flo", "f2.flo"]
    assert all(read_flo(flo / f"f{k}.flo").shape == (HEIGHT, WIDTH, 2) for k in range(3))


def test_bad_videos_and_outputs_are_one_line(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default output, flow.mp4, would go
    clip = workdir / "clip.mp4"
    (tmp_path / "junk.mp4").write_bytes(b"not a video " * 100)
    write_video(tmp_path / "one.mp4", generate_sequence(0, frames=2, height=64, width=64).frames[:1])
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    cases = [
        ([tmp_path / "missing.mp4"], "no such video file"),
        ([tmp_path / "junk.mp4", "-o", tmp_path / "a.mp4"], "is not a video PyAV can read"),
        ([tmp_path / "one.mp4", "-o", tmp_path / "b.mp4"], "1 frame(s) to read; at least 2 frames are needed"),
        ([clip, "--start", 6, "-o", tmp_path / "c.mp4"], "0 frame(s) to read with --start/--end/--every"),
        ([clip, "-o", a_file / "flow.mp4"], "taken exists and is not a folder"),
        ([clip, "--flo-dir", a_file], "taken exists and is not a folder"),
        ([clip, clip], "is a video: give one video file alone"),
        ([clip, "--every", 0], "--every must be >= 1, got 0"),
        ([clip, "--end", 2, "--start", 2], "--end must be greater than --start (2), got 2"),
        ([clip, "--batch-size", 0], "--batch-size must be >= 1, got 0"),
        ([clip, "--fps", -1], "--fps must be a positive frame rate"),
        ([clip, "--flo", tmp_path / "a", "--flo-dir", tmp_path / "b"], "give --flo or --flo-dir, not both"),
    ]
    for args, message in cases:
        code, _, err = _run(_flow_args(workdir, *args), capsys)
        assert message in _one_line_error(code, err), args
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.mp4", "one.mp4", "taken"]  # nothing written
