"""Batch jobs on Ray: sharding, equality with one process, resume, faults, the statistics tables, errors,
and a real two-node cluster on this machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raft_engine import FlowEngine, load_model
from raft_engine.cli import main
from raft_engine.distributed import flow_batch
from raft_engine.errors import ClusterError
from raft_engine.io import read_flo
from raft_engine.scenes import generate_sequence

ray = pytest.importorskip("ray", reason="Ray (the [ray] extra) is not installed")
pq = pytest.importorskip("pyarrow.parquet")

HEIGHT, WIDTH, ITERS = 128, 136, 2
# Each flow against FlowEngine.sequence on its clip in one process: the bound. Measured 0 (the same
# engine on the same frames; batches of pairs that differ only in which pairs share a batch).
EXACT = 1e-5


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two folders of frames (6 and 4 frames) and a list naming them: short clips, small frames."""
    root = tmp_path_factory.mktemp("clips")
    folders = []
    for name, seed, frames in (("walk", 1, 6), ("pan", 2, 4)):
        folder = root / name
        folder.mkdir()
        for k, frame in enumerate(generate_sequence(seed, frames=frames, height=HEIGHT, width=WIDTH).frames):
            Image.fromarray(frame).save(folder / f"{k:03d}.png")
        folders.append(folder)
    (root / "clips.txt").write_text("# two clips\nwalk\npan\n")
    return root


def _sequence_flows(folder: Path) -> list[torch.Tensor]:
    frames = [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]
    engine = FlowEngine(load_model("builtin"), device="cpu")
    return [result.flow[0] for result in engine.sequence(frames, iters=ITERS, batch_size=1)]


def _batch(clips: Path, out: Path, *extra: str) -> int:
    return main(["batch", str(clips / "clips.txt"), "-o", str(out), "--iters", str(ITERS), "--shard-frames", "2",
                 "--write", "flo", *extra])  # fmt: skip


def test_flows_and_tables_equal_one_process(ray_session, clips, tmp_path, capsys):
    out = tmp_path / "out"
    assert _batch(clips, out, "--workers", "2") == 0, capsys.readouterr().err
    for name, frames in (("walk", 6), ("pan", 4)):
        written = sorted(p.name for p in (out / name).iterdir())
        assert written == [f"{k:06d}.flo" for k in range(frames - 1)]  # each pair exactly once
        for k, expected in enumerate(_sequence_flows(clips / name)):
            actual = torch.from_numpy(read_flo(out / name / f"{k:06d}.flo")).permute(2, 0, 1)
            assert float((actual - expected).norm() / expected.norm()) < EXACT
    pairs = pq.read_table(out / "pairs.parquet").to_pylist()
    assert [(p["clip"], p["frame1"], p["frame2"]) for p in pairs] == [("pan", k, k + 1) for k in range(3)] + [
        ("walk", k, k + 1) for k in range(5)
    ]
    for pair in pairs:  # the statistics are the flows'
        magnitude = np.linalg.norm(read_flo(out / pair["clip"] / f"{pair['frame1']:06d}.flo"), axis=2).ravel()
        assert pair["mean"] == pytest.approx(magnitude.mean(), rel=1e-5)
        assert pair["max"] == pytest.approx(magnitude.max(), rel=1e-5)
        assert pair["p90"] == pytest.approx(np.percentile(magnitude, 90), rel=1e-4)
    table = {row["clip"]: row for row in pq.read_table(out / "clips.parquet").to_pylist()}
    walk = [p["mean"] for p in pairs if p["clip"] == "walk"]
    assert (table["walk"]["frames"], table["walk"]["pairs"]) == (6, 5)
    assert table["walk"]["motion"] == pytest.approx(np.mean(walk)) and table["walk"]["motion_std"] == pytest.approx(
        np.std(walk)
    )
    assert not (out / "errors.jsonl").exists()


def test_resume_redoes_only_what_is_missing(ray_session, clips, tmp_path, capsys):
    out = tmp_path / "out"
    assert _batch(clips, out) == 0
    before = {p: p.read_bytes() for p in out.rglob("*.flo")}
    config, *entries = (out / "manifest.jsonl").read_text().splitlines()
    # Walk's first shard's entry gone, pan's last shard's file gone: both run again, nothing else.
    kept = [
        line
        for line in entries
        if (json.loads(line)["shard"]["clip"], json.loads(line)["shard"]["start"]) != ("walk", 0)
    ]
    assert len(kept) == len(entries) - 1 == 4
    (out / "manifest.jsonl").write_text("\n".join([config, *kept]) + "\n")
    (out / "pan" / "000002.flo").unlink()
    capsys.readouterr()
    assert _batch(clips, out) == 0
    assert "2 shard(s) run, 3 done before" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in out.rglob("*.flo")} == before  # the same bytes, whichever run
    assert _batch(clips, out) == 0 and "0 shard(s) run, 5 done before" in capsys.readouterr().out
    # Another configuration over the same OUT is refused, unless --overwrite.
    assert _batch(clips, out, "--write", "png") == 1
    assert "holds a job of another configuration (writes differ): give --overwrite" in capsys.readouterr().err
    assert _batch(clips, out, "--write", "png", "--overwrite") == 0
    assert not list(out.rglob("*.flo")) and len(list(out.rglob("*.png"))) == 8


def test_a_worker_that_dies_is_replaced_and_its_shard_redone(ray_session, clips, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert _batch(clips, reference, "--shard-frames", "3") == 0
    out, marker = tmp_path / "out", tmp_path / "crashed"
    report = flow_batch([str(clips / "clips.txt")], out, iters=ITERS, shard_frames=3, writes=("flo",),
                        crash_marker=str(marker))  # fmt: skip
    assert report.ok and report.shards_run == 3, report
    assert marker.exists()  # a worker did exit in the middle of a shard
    for path in reference.rglob("*.flo"):
        assert (out / path.relative_to(reference)).read_bytes() == path.read_bytes()


def test_an_unreadable_clip_is_recorded_and_the_job_goes_on(ray_session, clips, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    out = tmp_path / "out"
    code = main(["batch", str(clips / "pan"), str(broken), "-o", str(out), "--iters", "1", "--shard-frames", "2"])
    assert code == 1
    assert "clip broken: " in capsys.readouterr().err
    (error,) = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert error["clip"] == "broken" and "is not a video PyAV can read" in error["reason"]
    assert [row["clip"] for row in pq.read_table(out / "clips.parquet").to_pylist()] == ["pan"]


def test_both_directions_and_the_occluded_fraction(ray_session, clips, tmp_path):
    out = tmp_path / "out"
    assert main(["batch", str(clips / "pan"), "-o", str(out), "--iters", "1", "--shard-frames", "2",
                 "--bidirectional", "--write", "npz,masks"]) == 0  # fmt: skip
    arrays = np.load(out / "pan" / "000001.npz")
    assert set(arrays.files) == {"flow", "flow_backward", "occlusion", "occlusion_backward"}
    pair = pq.read_table(out / "pairs.parquet").to_pylist()[1]
    assert pair["occluded"] == pytest.approx(arrays["occlusion"].mean())
    assert (out / "pan" / "000001.backward.occlusion.png").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shard-frames", "1"], "--shard-frames must be >= 2"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--write", "flo,gif"], "unknown output kind(s) gif; --write takes flo, png, kitti, npz, masks"),
        (["--write", "masks"], "--write masks needs --bidirectional"),
        (["--address", "127.0.0.1:9"], "cannot reach a Ray cluster at 127.0.0.1:9"),
    ],
)
def test_mistakes_are_one_line(clips, tmp_path, capsys, argv, message):
    code = main(["batch", str(clips / "pan"), "-o", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0], err


def test_a_cluster_too_small_for_the_pool_fails_naming_its_resources(ray_session, clips, tmp_path):
    with pytest.raises(ClusterError, match=r"did not start 3 worker\(s\) of 1 CPU\(s\) each within 2 s: it has 2 CPU"):
        flow_batch([str(clips / "clips.txt")], tmp_path / "out", iters=1, shard_frames=2, workers=3, start_timeout=2)


def test_empty_or_missing_inputs_are_one_line(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("# nothing\n")
    for inputs, message in (
        ([str(tmp_path / "nope.mp4")], "no such clip"),
        ([str(tmp_path / "empty.txt")], "lists no clips"),
    ):
        assert main(["batch", *inputs, "-o", str(tmp_path / "out")]) == 1
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# A real cluster: a head and a second node on this machine, joined by address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`ray start` in a session of its own: its daemons keep its pid as their process group."""
    command = [sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", *args]
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    return process


def _stop(group: int) -> None:
    """Stop one `ray start`'s processes, in ray stop's order (raylet, the others, gcs_server), then kill."""
    import psutil  # vendored by Ray, importable after `import ray`

    members = [p for p in psutil.process_iter(["name", "cmdline"]) if _group(p) == group]
    order = sorted(members, key=lambda p: 0 if "raylet" in p.info["name"] else 2 if "gcs" in p.info["name"] else 1)
    for process in order:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(order, timeout=5)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group(process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


def test_a_job_joins_a_two_node_cluster_by_address(clips, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    # A short temp dir of its own: Ray's socket paths beneath it must stay under 108 bytes.
    temp = Path(tempfile.mkdtemp(prefix="rayt-", dir="/tmp"))
    # The Ray client server's port outside 10002-19999, which Ray keeps for its worker processes.
    client_port = 20000 + _free_port() % 8000
    head = _ray_start(["--head", f"--port={port}", f"--temp-dir={temp}", "--num-cpus=1", "--include-dashboard=false",
                       f"--ray-client-server-port={client_port}", "--disable-usage-stats"], env)  # fmt: skip
    node = None
    try:
        node = _ray_start([f"--address=127.0.0.1:{port}", "--num-cpus=1", "--disable-usage-stats"], env)
        out = tmp_path / "out"
        done = subprocess.run(
            [sys.executable, "-m", "raft_engine.cli", "batch", str(clips / "clips.txt"), "-o", str(out), "--iters", "1",
             "--shard-frames", "2", "--workers", "2", "--address", f"127.0.0.1:{port}"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        nodes = {json.loads(line)["node"] for line in (out / "manifest.jsonl").read_text().splitlines()[1:]}
        assert len(nodes) == 2, nodes  # shards ran on both nodes, recorded per shard
        assert "2 node(s)" in done.stdout
    finally:
        for process in (node, head):
            if process is not None:
                _stop(process.pid)
        time.sleep(0.5)
        left = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True).stdout.strip()
        shutil.rmtree(temp, ignore_errors=True)
    assert not left


def test_a_clip_gone_after_planning_is_an_error_row_not_a_crash(ray_session, tmp_path):
    """A worker that cannot read its shard's frames (the folder removed since the job planned it) reports
    the shard as failed, naming the path, and the job goes on."""
    from raft_engine.distributed.worker import ShardWorker
    from raft_engine.runtime.options import EngineOptions

    options = EngineOptions(device="cpu").to_dict()
    worker = ShardWorker("builtin", options, ITERS, None, False, False, (), str(tmp_path / "out"))
    shard = {"clip": "gone", "path": str(tmp_path / "gone"), "kind": "folder", "start": 0, "stop": 2}
    row = worker({name: np.array([value]) for name, value in shard.items()})
    assert row["status"][0] == "error" and str(tmp_path / "gone") in row["reason"][0], row["reason"][0]


def test_the_documentation_examples_run(ray_session, clips, tmp_path, monkeypatch):
    """docs/pages/guides/batch.md's command and Python examples, on the session's Ray, in a folder with
    its clips.txt (the guide's command for N GPUs is ```text: it needs GPUs)."""
    import re

    page = (Path(__file__).resolve().parent.parent / "docs" / "pages" / "guides" / "batch.md").read_text()
    shutil.copytree(clips, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    shell = re.findall(r"```bash\n(.*?)```", page, flags=re.S)
    commands = [line.split("#")[0].split() for block in shell for line in block.splitlines()]
    commands = [words[1:] for words in commands if words[:1] == ["raft-engine"]]
    assert commands == [["batch", "clips.txt", "-o", "OUT", "--workers", "2"]]
    assert main([*commands[0], "--iters", str(ITERS)]) == 0
    assert pq.read_table("OUT/pairs.parquet").num_rows == 5 + 3
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", page, flags=re.S):
        exec(block.replace("workers=2,", f"workers=2, iters={ITERS},"), namespace)
    assert namespace["report"].pairs == 8 and not namespace["report"].failed
    assert len(list((tmp_path / "flows" / "walk").glob("*.flo"))) == 5
    assert set(namespace["clips"]["clip"]) == {"walk", "pan"} and set(namespace["still"]) <= {"walk", "pan"}
