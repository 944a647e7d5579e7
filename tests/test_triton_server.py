"""The Triton Inference Server model repository and the HTTP client.

config.pbtxt is parsed with tritonclient's own ModelConfig schema and checked against the ONNX graph.
The client is tested against raft-engine's own flow server, which speaks the same KServe v2 protocol
(tests/test_serving.py). That server always batches and takes any size; a fixed-size graph without
batching, which only a Triton repository can declare, is served here by a stand-in speaking the
protocol (JSON header plus binary tensors) that loads the repository as Triton would: its config.pbtxt
and 1/model.onnx, run by ONNX Runtime.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from google.protobuf import text_format
from synthetic import synthetic_state_dict
from tritonclient.grpc import model_config_pb2

from raft_engine.cli import main
from raft_engine.export import triton_flow, triton_model_config
from raft_engine.export.triton_server import check_repository
from raft_engine.scenes import scene_tensors

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}
TRITON_TO_KSERVE = {model_config_pb2.TYPE_FP32: "FP32"}


def parse_config(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def graph_dims(value) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def check_against_graph(config: model_config_pb2.ModelConfig, graph: onnx.GraphProto) -> None:
    """Every input and output of the graph, in order, with its data type and dims (less the batch
    dimension when Triton batches)."""
    batching = config.max_batch_size > 0
    for entries, values in ((config.input, graph.input), (config.output, graph.output)):
        assert [e.name for e in entries] == [v.name for v in values]
        for entry, value in zip(entries, values, strict=True):
            assert entry.data_type == ONNX_TO_TRITON[value.type.tensor_type.elem_type]
            dims = graph_dims(value)
            assert list(entry.dims) == (dims[1:] if batching else dims)
            if batching:
                assert dims[0] == -1  # the graph's batch is dynamic


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """`raft-engine export --triton-repository` of RAFT-small (2 iterations, dynamic size), into a
    repository that already holds another model (hence --force)."""
    folder = tmp_path_factory.mktemp("triton")
    weights = folder / "small.pth"
    torch.save(synthetic_state_dict("official_small"), weights)
    repo = folder / "models"
    (repo / "other" / "1").mkdir(parents=True)
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')
    # Refused without --force, before any work.
    command = ["export", "--weights", str(weights), "--iters", "2", "--dynamic-size", "--triton-repository", str(repo)]
    assert main(command) == 1
    assert sorted(p.name for p in repo.iterdir()) == ["other"]
    options = ["--model-name", "flow", "--max-batch-size", "4", "--instances", "2", "--tensorrt-fp16", "--force"]
    assert main([*command, "--height", "128", "--width", "160", *options]) == 0
    return repo


def test_repository_layout_and_config(repository):
    assert sorted(p.name for p in repository.iterdir()) == ["flow", "other"]
    assert (repository / "other" / "config.pbtxt").read_text() == 'name: "other"\n'  # left alone
    config = parse_config(repository / "flow" / "config.pbtxt")
    graph = onnx.load(repository / "flow" / "1" / "model.onnx").graph
    assert (config.name, config.platform, config.max_batch_size) == ("flow", "onnxruntime_onnx", 4)
    check_against_graph(config, graph)
    assert [list(e.dims) for e in config.input] == [[3, -1, -1]] * 2
    assert [(e.name, list(e.dims)) for e in config.output] == [("flow", [2, -1, -1])]
    assert list(config.dynamic_batching.preferred_batch_size) == [4]  # only full batches skip the queue delay
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(4 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/tmp/raft_engine_trt",
    }
    assert not [p.name for p in repository.iterdir() if p.name.startswith(".")]  # no staging folder left


def tiny_graph(path, batch: int | str, outputs=("flow",)) -> None:
    """A graph with RAFT's interface and a fixed size (the flow is a slice of image1 - image2)."""
    from onnx import TensorProto, helper

    images = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, 3, 128, 160]) for n in ("image1", "image2")]
    nodes = [helper.make_node("Sub", ["image1", "image2"], ["difference"])]
    starts, ends, axes = (helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s", 0), ("e", 2), ("a", 1)))
    nodes.append(helper.make_node("Slice", ["difference", "s", "e", "a"], ["flow"]))
    flow = helper.make_tensor_value_info("flow", TensorProto.FLOAT, [batch, 2, 128, 160])
    graph = helper.make_graph(nodes, "tiny", images, [flow], initializer=[starts, ends, axes])
    # An IR version and opset that every ONNX Runtime of the test extra loads.
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_config_of_a_fixed_graph_without_batching(tmp_path):
    tiny_graph(tmp_path / "fixed.onnx", 1)
    config = text_format.Parse(
        triton_model_config(tmp_path / "fixed.onnx", max_batch_size=0), model_config_pb2.ModelConfig()
    )
    check_against_graph(config, onnx.load(tmp_path / "fixed.onnx").graph)
    assert [list(e.dims) for e in config.input] == [[1, 3, 128, 160]] * 2
    assert not config.HasField("dynamic_batching") and not config.HasField("optimization")
    with pytest.raises(
        ValueError, match="max_batch_size 8 needs a graph with a dynamic batch; image1 has a fixed batch"
    ):
        triton_model_config(tmp_path / "fixed.onnx", max_batch_size=8)
    tiny_graph(tmp_path / "batched.onnx", "batch")
    config = text_format.Parse(
        triton_model_config(tmp_path / "batched.onnx", max_batch_size=6), model_config_pb2.ModelConfig()
    )
    check_against_graph(config, onnx.load(tmp_path / "batched.onnx").graph)
    assert list(config.dynamic_batching.preferred_batch_size) == [6]
    no_delay = triton_model_config(tmp_path / "batched.onnx", max_batch_size=6, queue_delay_us=0)
    assert (
        text_format.Parse(no_delay, model_config_pb2.ModelConfig()).dynamic_batching.max_queue_delay_microseconds == 0
    )
    for options, message in [
        (dict(max_batch_size=-1), "max_batch_size must be an integer >= 0"),
        (dict(instances=0), "instances must be"),
        (dict(queue_delay_us=-1), "queue_delay_us must be an integer >= 0"),
        (dict(model_name="a/b"), "model name must be letters, digits"),
        (dict(model_name='a"b'), "model name must be letters, digits"),
    ]:
        with pytest.raises(ValueError, match=message):
            triton_model_config(tmp_path / "batched.onnx", **options)


def test_repository_refusals(tmp_path, capsys):
    check_repository(tmp_path / "new")  # a new folder
    (tmp_path / "empty").mkdir()
    check_repository(tmp_path / "empty")
    (tmp_path / "full" / "m").mkdir(parents=True)
    with pytest.raises(ValueError, match="repository folder .*full is not empty \\(m\\)"):
        check_repository(tmp_path / "full")
    check_repository(tmp_path / "full", force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        check_repository(tmp_path / "file", force=True)
    # The command line refuses Triton options without a repository, and the plain export's with one.
    assert main(["export", "--height", "128", "--width", "160", "--max-batch-size", "2"]) == 1
    assert "--max-batch-size need(s) --triton-repository DIR" in capsys.readouterr().err
    assert main(["export", "--height", "128", "--width", "160", "--triton-repository", "r", "-o", "x.onnx"]) == 1
    assert "-o do(es) not apply with --triton-repository" in capsys.readouterr().err


class StandInServer(BaseHTTPRequestHandler):
    """Triton's HTTP endpoints for one model of a repository: metadata, and inference with binary tensors."""

    protocol_version = "HTTP/1.1"
    model = None  # set on a subclass: {"name", "config", "session"}

    def log_message(self, *args):  # quiet
        pass

    def reply(self, payload: dict, binary: bytes = b"") -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream" if binary else "application/json")
        if binary:
            self.send_header("Inference-Header-Content-Length", str(len(body)))
        self.send_header("Content-Length", str(len(body) + len(binary)))
        self.end_headers()
        self.wfile.write(body + binary)

    def tensors(self, entries) -> list[dict]:
        config = self.model["config"]
        batch = [-1] if config.max_batch_size > 0 else []
        return [
            {"name": e.name, "datatype": TRITON_TO_KSERVE[e.data_type], "shape": batch + list(e.dims)} for e in entries
        ]

    def do_GET(self):
        config = self.model["config"]
        if self.path == f"/v2/models/{config.name}/config":
            self.reply({"name": config.name, "platform": config.platform, "max_batch_size": config.max_batch_size})
            return
        assert self.path == f"/v2/models/{config.name}", self.path
        self.reply(
            {
                "name": config.name,
                "platform": config.platform,
                "versions": ["1"],
                "inputs": self.tensors(config.input),
                "outputs": self.tensors(config.output),
            }
        )

    def do_POST(self):
        config = self.model["config"]
        assert self.path == f"/v2/models/{config.name}/infer", self.path
        body = self.rfile.read(int(self.headers["Content-Length"]))
        header_length = int(self.headers["Inference-Header-Content-Length"])
        request = json.loads(body[:header_length])
        offset, feeds = header_length, {}
        for entry, declared in zip(request["inputs"], self.tensors(config.input), strict=True):
            shape = entry["shape"]
            # Triton's own checks: the batch within max_batch_size, the other dims as configured.
            batch_ok = config.max_batch_size == 0 or 1 <= shape[0] <= config.max_batch_size
            dims = declared["shape"]
            dims_ok = len(shape) == len(dims) and all(d in (-1, s) for d, s in zip(dims, shape, strict=True))
            if entry["name"] != declared["name"] or not (batch_ok and dims_ok):
                self.send_error(400, f"unexpected input {entry['name']} {shape}, configured {declared}")
                return
            size = entry["parameters"]["binary_data_size"]
            feeds[entry["name"]] = np.frombuffer(body[offset : offset + size], np.float32).reshape(shape)
            offset += size
        names = [o["name"] for o in request["outputs"]]
        results = self.model["session"].run(names, feeds)
        outputs = [
            {"name": n, "datatype": "FP32", "shape": list(r.shape), "parameters": {"binary_data_size": r.nbytes}}
            for n, r in zip(names, results, strict=True)
        ]
        self.reply({"model_name": config.name, "outputs": outputs}, b"".join(r.tobytes() for r in results))


def serve(folder):
    """The stand-in server on a free local port for the model in `folder` (config.pbtxt, 1/model.onnx)
    -> (its address, the server to shut down)."""
    handler = type("Handler", (StandInServer,), {})
    handler.model = {
        "config": parse_config(folder / "config.pbtxt"),
        "session": onnxruntime.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]),
    }
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"127.0.0.1:{httpd.server_address[1]}", httpd


def test_client_of_a_fixed_model_without_batching(tmp_path):
    folder = tmp_path / "tiny"
    (folder / "1").mkdir(parents=True)
    tiny_graph(folder / "1" / "model.onnx", 1)
    (folder / "config.pbtxt").write_text(triton_model_config(folder / "1" / "model.onnx", "tiny", max_batch_size=0))
    address, httpd = serve(folder)
    try:
        image1, image2, _ = scene_tensors([0], 125, 160)  # padded to 128x160 by the client
        flow = triton_flow(image1, image2, url=address, model_name="tiny").flow
        assert flow.shape == (1, 2, 125, 160)
        torch.testing.assert_close(flow, (image1 - image2)[:, :2])  # the tiny graph's "flow", cropped back
        with pytest.raises(ValueError, match="model 'tiny' takes batches of 1, got 2 pair"):
            triton_flow(torch.cat([image1] * 2), torch.cat([image2] * 2), url=address, model_name="tiny")
        other = torch.full((1, 3, 136, 160), 128.0)
        with pytest.raises(ValueError, match="model 'tiny' takes 128x160 images; images of 136x160 pad to 136x160"):
            triton_flow(other, other, url=address, model_name="tiny")
    finally:
        httpd.shutdown()


def test_failed_triton_exports_leave_the_repository_as_it_was(tmp_path, capsys):
    repo = tmp_path / "models"
    weights = tmp_path / "small.pth"
    torch.save(synthetic_state_dict("official_small"), weights)
    base = ["export", "--weights", str(weights), "--iters", "1", "--height", "128", "--width", "160"]
    for options, message in [
        (["--instances", "0"], "instances must be >= 1"),
        (["--model-name", "a b"], "model name must be letters, digits"),
        (["--max-batch-size", "-2"], "max_batch_size must be an integer >= 0"),
    ]:
        assert main([*base, "--triton-repository", str(repo), *options]) == 1
        assert message in capsys.readouterr().err
        assert not repo.exists()
