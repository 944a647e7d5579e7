"""The flow server on Ray Serve, on the session's local Ray: flows equal to FlowEngine's, every refusal with
its status, dynamic batching, the KServe v2 protocol with the Triton Inference Server client, a replica
that dies, and a clean stop of `raft-engine serve` on SIGINT and SIGTERM."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import rel_error
from PIL import Image

from raft_engine import FlowEngine, load_model
from raft_engine.io import flow_to_color, read_flo, read_kitti_flow
from raft_engine.scenes import generate_pair

pytest.importorskip("ray.serve", reason="Ray Serve (the [ray] extra) is not installed")
pytest.importorskip("multipart", reason="python-multipart (the [ray] extra) is not installed")
requests = pytest.importorskip("requests")

ITERS = 2
MAX_BATCH = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(ray_session):
    """The server (2 iterations by default, batches of up to 4 pairs, 200 ms to fill) at route /, and a
    tight one (batches of 1, 1 request queued) at /tight, on one Serve instance; stopped at the end."""
    from ray import serve

    from raft_engine.serving import build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = dict(iters=ITERS, cpus_per_replica=0.5, threads=1, max_pixels=300 * 300, max_body_bytes=2 << 20)
    serve.run(build_app(max_batch_size=MAX_BATCH, batch_wait_ms=200, **common), name="raft", route_prefix="/")
    serve.run(
        build_app(max_batch_size=1, batch_wait_ms=0, max_queued=1, model_name="tight", **common),
        name="tight",
        route_prefix="/tight",
    )
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def engine():
    return FlowEngine(load_model("builtin"), device="cpu")


@pytest.fixture(scope="module")
def pair():
    scene = generate_pair(5, 125, 131)  # padded to 128x136 by the server, as by the engine
    return scene.image1, scene.image2


def _post(url: str, image1, image2, timeout: float = 120, **fields) -> requests.Response:
    files = {}
    for name, image in (("image1", image1), ("image2", image2)):
        if image is not None:
            files[name] = (f"{name}.png", image if isinstance(image, bytes) else _png(image), "image/png")
    return requests.post(f"{url}/v1/flow", files=files, data=fields, timeout=timeout)


def _flow(expected) -> np.ndarray:
    return expected.flow[0].permute(1, 2, 0).numpy()


def test_flows_equal_the_engine_in_every_format(server, engine, pair, tmp_path):
    expected = engine.estimate(*pair, iters=ITERS)
    answer = _post(server, *pair)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["x-flow-shape"] == "125,131,2" and answer.headers["x-iters"] == str(ITERS)
    assert int(answer.headers["x-batch-size"]) >= 1 and float(answer.headers["x-server-time-ms"]) > 0
    (tmp_path / "flow.flo").write_bytes(answer.content)
    assert rel_error(torch.from_numpy(read_flo(tmp_path / "flow.flo")), torch.from_numpy(_flow(expected))) <= 1e-5
    more = engine.estimate(*pair, iters=3)
    flow = np.load(io.BytesIO(_post(server, *pair, format="npy", iters="3").content))
    assert rel_error(torch.from_numpy(flow), torch.from_numpy(_flow(more))) <= 1e-5
    picture = np.asarray(Image.open(io.BytesIO(_post(server, *pair, format="png").content)))
    assert np.abs(picture.astype(int) - flow_to_color(_flow(expected))).max() <= 1
    (tmp_path / "flow.png").write_bytes(_post(server, *pair, format="kitti").content)
    kitti, valid = read_kitti_flow(tmp_path / "flow.png")
    assert valid.all() and np.abs(kitti - _flow(expected)).max() <= 1 / 128 + 1e-6  # KITTI's 1/64 px steps


def test_both_directions_and_the_masks(server, engine, pair):
    expected = engine.bidirectional(*pair, iters=ITERS)
    answer = _post(server, *pair, backward="true")
    assert answer.status_code == 200, answer.text
    arrays = np.load(io.BytesIO(answer.content))
    assert sorted(arrays.files) == ["flow", "flow_backward", "occlusion", "occlusion_backward"]
    assert rel_error(torch.from_numpy(arrays["flow"]), expected.forward.flow[0].permute(1, 2, 0)) <= 1e-5
    assert rel_error(torch.from_numpy(arrays["flow_backward"]), expected.backward.flow[0].permute(1, 2, 0)) <= 1e-5
    for name, mask in (("occlusion", expected.occlusion), ("occlusion_backward", expected.occlusion_backward)):
        assert arrays[name].shape == (125, 131) and (arrays[name] != mask[0].numpy()).mean() < 1e-3


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no data behind it."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_each_refusal_is_immediate_with_its_status(server, pair):
    image1, image2 = pair
    small = np.zeros((64, 64, 3), np.uint8)
    cases = [
        (dict(image1=b"not an image", image2=image2), 400, "image1 is not an image file"),
        (
            dict(image1=image1, image2=image2[:-8]),
            400,
            "image sizes differ: image1 is 125x131 (HxW), image2 is 117x131",
        ),
        (dict(image1=small, image2=small), 400, "too small for RAFT"),
        (dict(image1=np.zeros((301, 300, 3), np.uint8), image2=image2), 413, "image1 is 301x300 (HxW), 90300 pixels"),
        (dict(image1=_bomb_png(30000, 30000), image2=image2), 413, "image1 is too large to decode"),
        (dict(image1=_bomb_png(1000, 1000), image2=image2), 413, "more than the 90000 allowed"),
        (dict(image1=image1, image2=None), 400, "the form has no file image2"),
        (dict(image1=image1, image2=image2, iters="0"), 400, "iters must be from 1 to 64, got 0"),
        (dict(image1=image1, image2=image2, iters="many"), 400, "iters must be an integer, got 'many'"),
        (dict(image1=image1, image2=image2, format="gif"), 400, "unknown format 'gif'"),
        (dict(image1=image1, image2=image2, backward="perhaps"), 400, "backward must be true or false"),
        (dict(image1=image1, image2=image2, backward="true", format="flo"), 400, "format must be npz, not flo"),
        (dict(image1=image1, image2=image2, colour="red"), 400, "unknown field(s) colour"),
    ]
    for arguments, status, message in cases:
        started = time.perf_counter()
        answer = _post(server, arguments.pop("image1"), arguments.pop("image2"), **arguments)
        assert (answer.status_code, answer.headers["content-type"]) == (status, "application/json"), answer.text
        assert message in answer.json()["error"], (message, answer.json())
        assert time.perf_counter() - started < 5
    too_big = requests.post(f"{server}/v1/flow", files={"image1": ("a.png", b"\0" * (3 << 20))}, timeout=60)
    assert too_big.status_code == 413 and "more than the 2097152 allowed" in too_big.json()["error"]
    not_a_form = requests.post(f"{server}/v1/flow", data=b"{}", headers={"Content-Type": "application/json"})
    assert not_a_form.status_code == 400 and "multipart/form-data" in not_a_form.json()["error"]
    assert _post(server, *pair).status_code == 200  # the server still answers


def test_batches_gather_requests_of_one_padded_size_only(server, pair):
    other = generate_pair(6, 160, 136)
    jobs = [(server, *pair)] * 3 + [(server, other.image1, other.image2)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: _post(*job), jobs))
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    sizes = [int(answer.headers["x-batch-size"]) for answer in answers]
    assert max(sizes[:3]) > 1, sizes  # requests of 125x131 (padded 128x136) ran together
    assert sizes[3] == 1, sizes  # the 160x136 request never shares their batch


def test_a_full_queue_answers_503_with_retry_after(server):
    scene = generate_pair(7, 288, 288)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _post(f"{server}/tight", scene.image1, scene.image2, iters="8"), range(8)))
    codes = sorted(answer.status_code for answer in answers)
    assert set(codes) == {200, 503} and codes.count(200) >= 2, codes
    refused = [answer for answer in answers if answer.status_code == 503]
    assert all(answer.headers["retry-after"] == "1" for answer in refused)


def test_the_kserve_protocol_and_the_triton_client(server, engine, pair):
    from raft_engine import FlowEstimator
    from raft_engine.export import TritonFlowClient

    address = server.removeprefix("http://")
    assert requests.get(f"{server}/v2/health/live").status_code == 200
    assert requests.get(f"{server}/v2/health/ready").status_code == 200
    assert requests.get(f"{server}/v2/models/raft/ready").status_code == 200
    assert requests.get(f"{server}/v2/models/other").status_code == 404
    assert requests.get(f"{server}/v2/models/raft/config").json()["max_batch_size"] == MAX_BATCH
    assert requests.get(f"{server}/healthz").json()["status"] == "ok"
    client = TritonFlowClient(address, model_name="raft")
    assert isinstance(client, FlowEstimator)
    result = client.estimate(*pair)
    assert rel_error(result.flow, engine.estimate(*pair, iters=ITERS).flow) <= 1e-5
    image1 = torch.stack([torch.from_numpy(image).permute(2, 0, 1).float() for image in pair[::-1]])
    image2 = image1.flip(0)
    assert rel_error(client.estimate(image1, image2).flow, engine.estimate(image1, image2, iters=ITERS).flow) <= 1e-5
    with pytest.raises(ValueError, match="takes batches of up to 4 \\(max_batch_size\\), got 5"):
        client.estimate(torch.full((5, 3, 128, 128), 9.0), torch.full((5, 3, 128, 128), 9.0))
    frames = [generate_pair(seed, 128, 136).image1 for seed in (1, 2, 3)]
    served = [r.flow for r in client.sequence(frames)]
    local = [r.flow for r in engine.sequence(frames, iters=ITERS)]
    assert all(rel_error(a, b) <= 1e-5 for a, b in zip(served, local, strict=True))
    # JSON tensors, an id and iterations as a parameter; then malformed requests, refused with the reason
    scene = generate_pair(8, 128, 136)  # a multiple of 8, as clients send
    padded = np.ascontiguousarray(scene.image1.transpose(2, 0, 1)[None], np.float32)
    request = {"id": "q1", "parameters": {"iters": 3}, "inputs": [
        {"name": name, "datatype": "FP32", "shape": list(padded.shape), "data": array.ravel().tolist()}
        for name, array in (("image1", padded), ("image2", padded[:, :, ::-1].copy()))]}  # fmt: skip
    answer = requests.post(f"{server}/v2/models/raft/infer", data=json.dumps(request))
    assert answer.status_code == 200 and answer.json()["id"] == "q1"
    output = answer.json()["outputs"][0]
    flow = torch.tensor(output["data"]).reshape(output["shape"])
    mirrored = torch.from_numpy(padded[:, :, ::-1].copy())
    assert rel_error(flow, engine.estimate(torch.from_numpy(padded), mirrored, iters=3).flow) <= 1e-5
    for body, message in [
        (b"{", "the request's JSON cannot be parsed"),
        (json.dumps({"inputs": [request["inputs"][0]]}).encode(), "the inputs must be image1 and image2"),
        (json.dumps({**request, "parameters": {"iters": 999}}).encode(), "iters must be from 1 to 64, got 999"),
    ]:
        refused = requests.post(f"{server}/v2/models/raft/infer", data=body)
        assert refused.status_code == 400 and message in refused.json()["error"], refused.text


def test_the_triton_client_functions_against_this_server(server, engine):
    """The Triton Inference Server client's functional form, its refusals and its settings, against this
    server (tests/test_triton_server.py keeps a stand-in only for a fixed-size graph without batching)."""
    from raft_engine.export import TritonFlowClient, triton_flow
    from raft_engine.scenes import scene_tensors

    address = server.removeprefix("http://")
    for seeds, height, width in [([0], 131, 165), ([1, 2], 128, 200)]:  # padded by the client; a batch of two
        image1, image2, _ = scene_tensors(seeds, height, width)
        result = triton_flow(image1, image2, url=address, model_name="raft")
        assert result.flow.shape == (len(seeds), 2, height, width) and result.flow_low is None
        assert rel_error(result.flow, engine.estimate(image1, image2, iters=ITERS).flow) <= 1e-5
    image = torch.full((1, 3, 128, 170), 128.0)
    with pytest.raises(ValueError, match="image sizes differ"):
        triton_flow(image, torch.full((1, 3, 136, 170), 128.0), url=address, model_name="raft")
    client = TritonFlowClient(address, model_name="raft")
    assert client.settings.runs_own_iters and client.settings.iters is None and client.settings.size is None
    assert client.settings.source == f"{address}/raft" and "inference server" in client.describe()
    with pytest.raises(ValueError, match="runs its graph's own iteration count"):
        client.estimate(image, image, iters=12)


def test_the_documentation_client_example_runs(server, engine, pair):
    """docs/pages/guides/serving.md's KServe client example, against this server."""
    import re
    import textwrap

    page = (Path(__file__).resolve().parent.parent / "docs" / "pages" / "guides" / "serving.md").read_text()
    (example,) = [textwrap.dedent(block) for block in re.findall(r"```python\n(.*?) *```", page, flags=re.S)]
    namespace = {"image1": pair[0], "image2": pair[1]}
    exec(example.replace("127.0.0.1:8000", server.removeprefix("http://")), namespace)
    assert rel_error(namespace["flow"], engine.estimate(*pair, iters=ITERS).flow) <= 1e-5


def test_a_replica_that_dies_is_replaced(server, pair):
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "tight" in a["name"]]
    replicas = [name for name in names if "FlowServer" in name]
    assert len(replicas) == 1, names
    ray.kill(ray.get_actor(replicas[0], namespace="serve"))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if _post(f"{server}/tight", *pair, timeout=10).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        pytest.fail("the server did not answer again within 90 s of its replica's death")
    assert _post(server, *pair).status_code == 200  # the other application was never touched


# ------------------------------------------------------------------------------------------------
# `raft-engine serve` as users run it, stopped by a signal


def _session_processes(session: int) -> list[int]:
    listing = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split("\n")
    return [int(line.split()[0]) for line in listing if line.strip() and int(line.split()[1]) == session]


def _lines(process: subprocess.Popen) -> list[str]:
    """The process's output lines as they come, gathered by a thread (a read never blocks the test)."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    return lines


def _wait_for(lines: list[str], prefix: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in list(lines) if line.startswith(prefix)]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no line {prefix!r} within {timeout} s; the output:\n{''.join(lines)}")


def test_serve_stops_cleanly_on_sigint_and_sigterm():
    servers = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        port, temp = _free_port(), tempfile.mkdtemp(prefix="rs-", dir="/tmp")
        env = {**os.environ, "RAY_TMPDIR": temp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        command = [sys.executable, "-m", "raft_engine.cli", "serve", "--port", str(port), "--iters", "1",
                   "--cpus-per-replica", "0.5", "--threads", "1"]  # fmt: skip
        process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)  # fmt: skip
        servers.append((signum, port, temp, process, _lines(process)))
    try:
        for _, port, _, _, lines in servers:
            _wait_for(lines, f"serving 'raft' at http://127.0.0.1:{port}", timeout=240)
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
        for signum, _, _, process, _ in servers:
            process.send_signal(signum)
        for signum, port, _, process, lines in servers:
            assert process.wait(timeout=90) == 0, "".join(lines)
            # Only the server's own lines on the terminal: Serve's INFO logs stay below --log-level.
            assert not [line for line in lines if " INFO " in line], "".join(lines)
            time.sleep(1)
            assert _session_processes(process.pid) == [], signum  # no Ray process left behind
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port))  # the port is free again
    finally:
        for _, _, temp, process, _ in servers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            for pid in _session_processes(process.pid):
                os.kill(pid, signal.SIGKILL)
            Path(temp).exists() and subprocess.run(["rm", "-rf", temp])


def test_serve_mistakes_are_one_line(capsys):
    from raft_engine.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        taken.listen()
        assert main(["serve", "--port", str(port)]) == 1
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    for argv, message in [
        (["--max-batch-size", "0"], "max_batch_size must be an integer > 0, got 0"),
        (["--model-name", "a/b"], "model name must be letters, digits"),
        (["--iters", "80"], "iters (80) must not be more than max_iters (64)"),
    ]:
        assert main(["serve", *argv]) == 1
        assert message in capsys.readouterr().err
