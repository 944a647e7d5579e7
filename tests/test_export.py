"""ONNX export and ONNX Runtime serving (CPU provider here; the CUDA variants carry the gpu marker)."""

from __future__ import annotations

import mmap
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import rel_error, to_tensor
from PIL import Image
from synthetic import synthetic_state_dict

from raft_engine import FlowEngine
from raft_engine.cli import main
from raft_engine.export import ExportError, OrtFlowSession, export_onnx, limits, onnx_export
from raft_engine.export.limits import MAX_TENSOR_ELEMENTS, check_dense_volume, dense_volume_elements
from raft_engine.export.onnx_export import TOLERANCE
from raft_engine.export.ort_session import (
    ProviderError,
    _provider_list,
    computes_shapes,
    cpu_placed_nodes,
    trt_cache_folders,
)
from raft_engine.runtime.inputs import Padder

# ONNX Runtime's CPU provider against PyTorch float32, fp32 graphs: relative L2 error of the flow,
# measured 1.0e-6..1.6e-6 (RAFT-small: 3-6 iterations, fixed and dynamic batch, flow and flow_low) and
# 2.5e-7..2.8e-7 (RAFT-large), so 1e-5 leaves a margin of 6x. (TOLERANCE["fp32"], 1e-4, is the export's
# own verification threshold, also used by the GPU tests below.)
TOLERANCE_VS_PYTORCH = 1e-5
# The fp16 graph's error against PyTorch float32 is half precision's (unit roundoff 2^-11 = 4.9e-4):
# measured 1.2e-3..1.4e-3 (small), 4.3e-4..4.9e-4 (large). A graph left in float32 would be at float32's
# 2.5e-7..1.6e-6, under this floor.
FP16_ERROR_FLOOR = 1e-5
ORT_PROVIDERS = onnxruntime.get_available_providers()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, official_small, official_large):
    """RAFT-small and -large at 128x160, 6 iterations, as the fixtures; fp32 and fp16."""
    folder = tmp_path_factory.mktemp("onnx")
    models = {"small": official_small, "large": official_large}
    reports = {}
    for variant, model in models.items():
        for dtype in ("fp32", "fp16"):
            path = folder / f"{variant}-{dtype}.onnx"
            reports[variant, dtype] = export_onnx(model, path, iters=6, height=128, width=160, dtype=dtype)
    return reports


@pytest.mark.parametrize("variant", ["small", "large"])
def test_onnx_runtime_reproduces_pytorch_and_the_fixtures(exported, reference, variant):
    report = exported[variant, "fp32"]
    assert report.corr == "volume"  # corr="auto" at 128x160: a dense pyramid of 0.5 MB
    assert report.relative_error < TOLERANCE_VS_PYTORCH  # measured by export_onnx on a generated pair
    session = OrtFlowSession(report.path, providers="cpu")
    flow = session(reference["image1"], reference["image2"])
    assert flow.shape == (1, 2, 128, 160)
    assert rel_error(flow[0], reference[f"official_{variant}_flow"]) < TOLERANCE_VS_PYTORCH
    odd = session.estimate(reference["odd_image1"], reference["odd_image2"])
    assert odd.flow.shape == (1, 2, 123, 157) and odd.flow_low is None
    assert rel_error(odd.flow[0], reference[f"official_{variant}_odd_flow"]) < TOLERANCE_VS_PYTORCH


def test_graph_is_standard_onnx_with_metadata(exported):
    model = onnx.load(str(exported["large", "fp32"].path))
    onnx.checker.check_model(model)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    ops = {node.op_type for node in model.graph.node}
    assert "GridSample" in ops and "Loop" not in ops  # iterations unrolled
    assert [i.name for i in model.graph.input] == ["image1", "image2"]
    assert [o.name for o in model.graph.output] == ["flow"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["raft_engine.variant"] == "large" and meta["raft_engine.iterations"] == "6"
    assert (meta["raft_engine.height"], meta["raft_engine.width"], meta["raft_engine.batch"]) == ("128", "160", "1")
    assert "2 * (x / 255) - 1" in meta["raft_engine.input"]


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every named tensor of the graph: inputs, outputs, initializers, intermediates."""
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


@pytest.mark.parametrize("variant", ["small", "large"])
def test_fp16_export_is_half_precision_with_a_float32_lookup(exported, reference, variant):
    report = exported[variant, "fp16"]
    model = onnx.load(str(report.path))
    float16, float32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    # The weights of the encoders and the update block are float16 initializers (named after the
    # parameters; RAFT-large's BatchNorms are folded into its convolutions, hence fewer of them there).
    initializers = {i.name: i.data_type for i in model.graph.initializer}
    for part in ("fnet", "cnet", "update_block"):
        weights = Counter(t for name, t in initializers.items() if name.startswith(f"model.{part}."))
        assert weights and set(weights) == {float16}, (part, weights)
    # So every convolution runs in float16, while the correlation path stays float32: the all-pairs
    # MatMul, the lookups (GridSample, 6 iterations x 4 levels: volume and coordinates) and InstanceNorm.
    types = _element_types(model)
    nodes = Counter(node.op_type for node in model.graph.node)
    assert nodes["GridSample"] == 24 and nodes["MatMul"] == 1 and nodes["Conv"] > 90
    wanted = {"Conv": float16, "GridSample": float32, "MatMul": float32, "InstanceNormalization": float32}
    for node in model.graph.node:
        if node.op_type in wanted:
            inputs = [types.get(name) for name in node.input if name]
            assert inputs == [wanted[node.op_type]] * len(inputs), (node.name, node.op_type, inputs)
    assert types["flow"] == float32
    # Its error against PyTorch float32 is that of half precision: above float32 rounding, within the
    # fp16 tolerance; measured by export_onnx on a generated pair, and here on the fixtures' pair.
    assert FP16_ERROR_FLOOR < report.relative_error < TOLERANCE["fp16"]
    flow = OrtFlowSession(report.path, providers="cpu")(reference["image1"], reference["image2"])
    assert FP16_ERROR_FLOOR < rel_error(flow[0], reference[f"official_{variant}_flow"]) < TOLERANCE["fp16"]


def test_kitti_padding_matches_flow_engine(exported, official_small, reference):
    """123x157 pads to the graph's 128x160: kitti puts the 5 rows at the bottom, sintel 2 on top and 3
    below (the 3 columns: 1 left, 2 right in both)."""
    height, width = reference["odd_image1"].shape[:2]
    assert Padder(height, width, "kitti").pads == (1, 2, 0, 5) and Padder(height, width, "sintel").pads == (1, 2, 2, 3)
    path = exported["small", "fp32"].path
    odd = reference["odd_image1"], reference["odd_image2"]
    kitti = OrtFlowSession(path, providers="cpu", padding="kitti")(*odd)
    engine = FlowEngine(official_small, padding="kitti", device="cpu", backend="torch")
    expected = engine(*odd, iters=6)
    assert kitti.shape == expected.shape == (1, 2, height, width)
    # float32 rounding: relative error measured 1.0e-6, at most 9e-5 px (atol: 11x that).
    assert rel_error(kitti, expected) < TOLERANCE_VS_PYTORCH
    torch.testing.assert_close(kitti, expected, rtol=0, atol=1e-3)
    # The two paddings differ there (measured: relative 0.36, up to 24 px): the comparison tells them apart.
    sintel = OrtFlowSession(path, providers="cpu", padding="sintel")(*odd)
    assert rel_error(sintel, kitti) > 0.1


def test_dynamic_batch_and_flow_low(tmp_path, official_small, reference, monkeypatch):
    report = export_onnx(
        official_small, tmp_path / "dyn.onnx", iters=4, height=128, width=160, dynamic_batch=True, flow_low=True
    )
    assert report.batch == "dynamic" and report.outputs == ("flow", "flow_low")
    session = OrtFlowSession(report.path, providers="cpu")
    engine = FlowEngine(official_small, device="cpu")
    for batch in (1, 3):
        image1 = np.stack([np.roll(reference["image1"], 3 * i, axis=1) for i in range(batch)])
        image2 = np.stack([reference["image2"]] * batch)
        result = session.estimate(image1, image2)
        expected = engine.estimate(image1, image2, iters=4)
        assert result.flow.shape == (batch, 2, 128, 160) and result.flow_low.shape == (batch, 2, 16, 20)
        assert rel_error(result.flow, expected.flow) < TOLERANCE_VS_PYTORCH
        assert rel_error(result.flow_low, expected.flow_low) < TOLERANCE_VS_PYTORCH
    # A dynamic batch is checked per call against the volume limit, here lowered to two pairs' volume.
    monkeypatch.setattr(limits, "MAX_TENSOR_ELEMENTS", dense_volume_elements(2, 128, 160))
    session.estimate(image1[:2], image2[:2])
    with pytest.raises(ValueError, match="batch 3 at 128x160 .* 307,200 elements .*use a batch of at most 2"):
        session.estimate(image1, image2)
    # On the CPU provider every node is CPU-placed: the rule leaves out only the shape computations
    # of the dynamic batch (Shape, and Concat/Reshape/... of int64 shapes), never image data.
    events = session._profile_events(["CPUExecutionProvider"])
    ran = Counter(e["args"]["op_name"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))
    counted = cpu_placed_nodes(events)
    assert ran["Shape"] > 0 and "Shape" not in counted
    assert counted["Conv"] == ran["Conv"] > 0 and counted["GridSample"] == ran["GridSample"] > 0
    assert 0 < counted["Concat"] < ran["Concat"]  # image Concats count, int64 shape Concats do not


def test_bad_export_requests(tmp_path, official_small):
    def bad(error, match, **kwargs):
        options = dict(iters=2, height=128, width=160)
        options.update(kwargs)
        with pytest.raises(error, match=match):
            export_onnx(official_small, tmp_path / "x.onnx", **options)

    bad(ValueError, "must be multiples of 8, got 130x160", height=130)
    bad(ValueError, "too small for RAFT: at least 128x128", height=64)
    bad(ValueError, "unknown dtype 'bf16'", dtype="bf16")
    bad(ValueError, "iters must be >= 1, got 0", iters=0)
    bad(TypeError, "iters must be an integer", iters=2.5)
    bad(ValueError, "batch must be >= 1", batch=0)
    bad(ValueError, "opset 15 is too old", opset=15)
    bad(ValueError, "height and width are required", height=None)
    with pytest.raises(TypeError, match="model must be a raft_engine.RAFT"):
        export_onnx(torch.nn.Identity(), tmp_path / "x.onnx", height=128, width=160)
    with pytest.warns(UserWarning, match="GridSample mode 'linear'"):
        export_onnx(official_small, tmp_path / "o20.onnx", iters=1, height=128, width=160, opset=20, verify=False)


def test_verification_catches_a_wrong_graph(tmp_path, official_small, monkeypatch):
    import raft_engine.export.onnx_export as onnx_export

    original = onnx_export.verify_graph

    def skewed(*args):
        relative, max_abs = original(*args)
        return relative + 1.0, max_abs

    export_onnx(official_small, tmp_path / "x.onnx", iters=1, height=128, width=160)
    good = (tmp_path / "x.onnx").read_bytes()
    monkeypatch.setattr(onnx_export, "verify_graph", skewed)
    with pytest.raises(ExportError, match="differs from PyTorch's.*nothing was written"):
        export_onnx(official_small, tmp_path / "x.onnx", iters=2, height=128, width=160)
    assert (tmp_path / "x.onnx").read_bytes() == good  # the earlier good export is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["x.onnx"]  # and no partial file is left


def test_session_errors(exported, reference, tmp_path):
    path = exported["small", "fp32"].path
    session = OrtFlowSession(path, providers="cpu")
    with pytest.raises(
        ValueError, match="images of 200x160 pad to 200x160: this graph was exported for 128x160, got 200x160"
    ):
        session(np.zeros((200, 160, 3), np.uint8), np.zeros((200, 160, 3), np.uint8))
    with pytest.raises(ValueError, match="exported for batch 1, got 2"):
        session(np.stack([reference["image1"]] * 2), np.stack([reference["image2"]] * 2))
    with pytest.raises(ValueError, match="image sizes differ"):
        session(reference["image1"], reference["odd_image2"])
    with pytest.raises(ValueError, match="unknown providers 'gpu'"):
        OrtFlowSession(path, providers="gpu")
    with pytest.raises(ValueError, match="cuda_graph=True needs the cuda provider"):
        OrtFlowSession(path, providers="cpu", cuda_graph=True)
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        OrtFlowSession(tmp_path / "missing.onnx")
    plain = tmp_path / "plain.onnx"
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    with pytest.raises(ValueError, match="not exported by raft_engine.export"):
        OrtFlowSession(plain, providers="cpu")


def test_provider_options():
    cuda = _provider_list("cuda", device_id=1)
    assert cuda == [
        ("CUDAExecutionProvider", {"device_id": "1", "enable_cuda_graph": "0", "use_tf32": "0"}),
        "CPUExecutionProvider",
    ]
    graphs = _provider_list("cuda", cuda_graph=True, tf32=True)[0][1]
    assert (graphs["enable_cuda_graph"], graphs["use_tf32"]) == ("1", "1")
    engines, timing = Path("/cache/tensorrt/raft-0123"), Path("/cache/tensorrt")
    trt = _provider_list("tensorrt", trt_cache=(engines, timing))
    assert trt[0] == (
        "TensorrtExecutionProvider",
        {
            "device_id": "0",
            "trt_fp16_enable": "0",
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": "1",
            "trt_timing_cache_path": str(timing),
        },
    )
    # Nodes that TensorRT does not take go to CUDA, with TF32 off there too.
    assert trt[1] == ("CUDAExecutionProvider", {"device_id": "0", "enable_cuda_graph": "0", "use_tf32": "0"})
    assert trt[2] == "CPUExecutionProvider"
    assert _provider_list("tensorrt", tensorrt_fp16=True)[0][1]["trt_fp16_enable"] == "1"
    assert _provider_list("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="cuda_graph=True is for the cuda provider"):
        _provider_list("tensorrt", cuda_graph=True)


@pytest.mark.parametrize(
    "library, provider",
    [("libonnxruntime_providers_cuda.so", "cuda"), ("libonnxruntime_providers_tensorrt.so", "tensorrt")],
)
def test_provider_option_names_are_ones_onnx_runtime_knows(tmp_path, library, provider):
    """A misspelt option name would be rejected, or ignored, only on a GPU: look for each name in the
    provider's library of the installed onnxruntime-gpu."""
    path = Path(onnxruntime.__file__).parent / "capi" / library
    if not path.is_file():
        pytest.skip(f"onnxruntime here has no {library} (the CPU-only package)")
    # The provider's own options (the TensorRT list also carries the CUDA ones, checked in the cuda case).
    options = _provider_list(provider, trt_cache=(tmp_path, tmp_path))[0][1]
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        unknown = [name for name in sorted(options) if data.find(name.encode()) < 0]
    assert not unknown, f"{library} does not mention {unknown}"


def test_tensorrt_cache_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("RAFT_ENGINE_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "raft.onnx"
    model.write_bytes(b"graph one")
    engines, timing = trt_cache_folders(model)
    assert timing == tmp_path / "cache" / "tensorrt" and engines.parent == timing and engines.is_dir()
    assert engines.name.startswith("raft-")
    assert trt_cache_folders(model) == (engines, timing)  # the same file finds its engines again
    # ONNX Runtime names engines after the file and node names, not the weights: a re-export under the
    # same name must not find the old engine.
    model.write_bytes(b"graph two")
    assert trt_cache_folders(model)[0] != engines
    mine_engines, mine_timing = trt_cache_folders(model, tmp_path / "mine")
    assert mine_timing == tmp_path / "mine" and mine_engines.parent == mine_timing and mine_engines.is_dir()


def test_session_options_reach_onnx_runtime_and_a_fallback_is_refused(exported, monkeypatch, tmp_path):
    """Every provider listed, none loading (ONNX Runtime is given only the CPU provider): the options
    reach InferenceSession, "cuda" and "tensorrt" raise, "auto" warns."""
    created = []
    real_session = onnxruntime.InferenceSession

    def cpu_only_session(path, options=None, providers=None):
        created.append(providers)
        return real_session(path, options, providers=["CPUExecutionProvider"])

    all_three = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "InferenceSession", cpu_only_session)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: all_three)
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: None, raising=False)
    path = exported["small", "fp32"].path
    fell_back = "asked for {}, but ONNX Runtime fell back to CPUExecutionProvider: {} failed to load"
    wanted = "TensorrtExecutionProvider"
    with pytest.raises(ProviderError, match=fell_back.format(wanted, wanted) + ".*TensorRT libraries"):
        OrtFlowSession(path, providers="tensorrt", trt_cache_dir=tmp_path, tensorrt_fp16=True)
    trt_options = created[-1][0][1]
    assert trt_options["trt_engine_cache_path"] == str(trt_cache_folders(path, tmp_path)[0])
    assert trt_options["trt_timing_cache_path"] == str(tmp_path) and trt_options["trt_fp16_enable"] == "1"
    wanted = "CUDAExecutionProvider"
    with pytest.raises(ProviderError, match=fell_back.format(wanted, wanted) + ".*CUDA and cuDNN libraries"):
        OrtFlowSession(path, providers="cuda", tf32=True)
    assert created[-1][0] == ("CUDAExecutionProvider", {"device_id": "0", "enable_cuda_graph": "0", "use_tf32": "1"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # "auto" picks CUDA when torch sees a GPU
    with pytest.warns(UserWarning, match=fell_back.format(wanted, wanted)):
        session = OrtFlowSession(path, providers="auto")
    assert session.providers == ["CPUExecutionProvider"] and created[-1][0][1]["use_tf32"] == "0"


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ORT_PROVIDERS,
    reason="onnxruntime here lists no CUDAExecutionProvider (the CPU-only package): nothing falls back",
)
@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="a GPU is visible: the CUDA provider may well load, leaving no fallback to catch (-m gpu checks it)",
)
@pytest.mark.parametrize("providers", ["cuda", "tensorrt"])
def test_a_gpu_provider_that_fails_to_load_is_an_error(exported, providers, tmp_path):
    """onnxruntime-gpu without a GPU (or without CUDA's libraries) lists its CUDA provider as available,
    then fails to load it and runs on the CPU: a session that asked for the GPU must refuse."""
    wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[providers]
    if wanted not in ORT_PROVIDERS:
        pytest.skip(f"onnxruntime here lists no {wanted}")
    with pytest.raises(ProviderError, match=f"asked for {wanted}, but ONNX Runtime fell back to CPUExecutionProvider"):
        OrtFlowSession(exported["small", "fp32"].path, providers=providers, trt_cache_dir=tmp_path)


def test_dense_volume_limit(exported, official_small, tmp_path, monkeypatch):
    # 1088x1920: 136 x 240 = 32,640 cells, so a volume of 32,640^2 = 1.07e9 elements per pair.
    assert dense_volume_elements(2, 1088, 1920) == 2 * 32_640**2 <= MAX_TENSOR_ELEMENTS
    assert dense_volume_elements(3, 1088, 1920) == 3_196_108_800 > MAX_TENSOR_ELEMENTS == 2**31 - 1
    check_dense_volume(2, 1088, 1920)
    with pytest.raises(ValueError, match=r"batch 3 at 1088x1920 .* 3,196,108,800 elements.* 2,147,483,647 .*at most 2"):
        check_dense_volume(3, 1088, 1920)
    with pytest.raises(ValueError, match="even one pair is too large"):
        check_dense_volume(1, 2160, 3840)

    # The export refuses before any work: tracing three 1088x1920 pairs would take minutes and ~13 GB.
    def no_work(*args, **kwargs):
        raise AssertionError("export_onnx went on to trace a graph it should have refused")

    monkeypatch.setattr(onnx_export, "scene_tensors", no_work)
    monkeypatch.setattr(torch.onnx, "export", no_work)
    with pytest.raises(ValueError, match="batch 3 at 1088x1920 .* 3,196,108,800 elements"):
        export_onnx(official_small, tmp_path / "big.onnx", iters=1, height=1088, width=1920, batch=3, corr="volume")
    # 1280x1920: one pair fits, the two pairs a dynamic batch is traced with do not.
    with pytest.raises(ValueError, match="traces the graph with 2 pairs: export a fixed batch of 1"):
        export_onnx(
            official_small, tmp_path / "big.onnx", iters=1, height=1280, width=1920, dynamic_batch=True, corr="volume"
        )
    assert not list(tmp_path.iterdir())
    # A session refuses a fixed-batch graph over the limit (lowered here below one 128x160 pair).
    monkeypatch.setattr(limits, "MAX_TENSOR_ELEMENTS", dense_volume_elements(1, 128, 160) - 1)
    with pytest.raises(ValueError, match="batch 1 at 128x160 .* 102,400 elements.*even one pair is too large"):
        OrtFlowSession(exported["small", "fp32"].path, providers="cpu")


def _profiled_node(op, provider="CPUExecutionProvider", inputs=None, outputs=None):
    """One node's event in ONNX Runtime's profile; inputs, outputs: [{element type: shape}, ...]."""
    args = {"op_name": op, "provider": provider}
    if inputs is not None:
        args["input_type_shape"] = inputs
    if outputs is not None:
        args["output_type_shape"] = outputs
    return {"cat": "Node", "name": f"node_{op}_kernel_time", "args": args}


def test_cpu_placement_rule_leaves_out_only_shape_computations():
    image, shape = {"float": [1, 3, 128, 160]}, {"int64": [4]}
    events = [
        {"cat": "Session", "name": "model_run", "args": {}},
        _profiled_node("Shape", inputs=[image], outputs=[shape]),  # reads only the image's shape
        _profiled_node("Size", inputs=[image], outputs=[{"int64": []}]),
        _profiled_node("Gather", inputs=[shape, {"int64": []}], outputs=[{"int64": []}]),
        _profiled_node("Concat", inputs=[{"int64": [1]}] * 4, outputs=[shape]),
        _profiled_node("Equal", inputs=[shape, shape], outputs=[{"bool": [4]}]),
        _profiled_node("ConstantOfShape", inputs=[{"int64": [1]}], outputs=[shape]),
        _profiled_node("Shape"),  # a profile without tensor types: the op alone decides
        # Real work:
        _profiled_node("ConstantOfShape", inputs=[shape], outputs=[{"float": [1, 2, 16, 20]}]),
        _profiled_node("Reshape", inputs=[image, shape], outputs=[{"float": [3, 128, 160]}]),
        _profiled_node("Range", inputs=[{"int64": []}] * 3, outputs=[{"int64": [320]}]),  # data, not a shape
        _profiled_node("Cast", inputs=[{"float": [2]}], outputs=[{"int64": [2]}]),  # reads float data
        _profiled_node("Conv"),
        # Not CPU-placed, or not a node's run:
        _profiled_node("GridSample", provider="CUDAExecutionProvider", inputs=[image], outputs=[image]),
        {
            "cat": "Node",
            "name": "node_Conv_fence_before",
            "args": {"op_name": "Conv", "provider": "CPUExecutionProvider"},
        },
    ]
    assert cpu_placed_nodes(events) == Counter({"ConstantOfShape": 1, "Reshape": 1, "Range": 1, "Cast": 1, "Conv": 1})
    assert computes_shapes("Unsqueeze", [{"int64": []}, {"int64": [1]}], [{"int64": [1]}])
    assert not computes_shapes("Unsqueeze", [{"float": []}, {"int64": [1]}], [{"float": [1]}])


def test_cli_export_and_flow_with_onnx(tmp_path, reference, capsys):
    torch.save(synthetic_state_dict("official_small"), tmp_path / "w.pth")
    for name in ("a", "b"):
        Image.fromarray(reference[f"odd_image{1 if name == 'a' else 2}"]).save(tmp_path / f"{name}.png")
    code = main(
        [
            "export",
            "--weights",
            str(tmp_path / "w.pth"),
            "--iters",
            "3",
            "--height",
            "128",
            "--width",
            "160",
            "-o",
            str(tmp_path / "raft.onnx"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "relative error" in out

    def onnx_flow(*options):
        frames = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
        return main(["flow", *frames, "--onnx", str(tmp_path / "raft.onnx"), "--providers", "cpu", *options])

    code = onnx_flow("-o", str(tmp_path / "flow.png"), "--flo", str(tmp_path / "flow.flo"))
    assert code == 0 and "ONNX Runtime CPUExecutionProvider" in capsys.readouterr().out
    from raft_engine.io import read_flo
    from raft_engine.weights import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = FlowEngine(load_model(tmp_path / "w.pth"), device="cpu")
    expected = engine(reference["odd_image1"], reference["odd_image2"], iters=3)[0].permute(1, 2, 0).numpy()
    assert rel_error(read_flo(tmp_path / "flow.flo"), expected) < TOLERANCE_VS_PYTORCH
    code = onnx_flow("--iters", "5")
    assert code == 1 and "exported with 3 iterations" in capsys.readouterr().err
    code = main(["export", "--weights", str(tmp_path / "w.pth"), "--height", "100", "--width", "160"])
    assert code == 1 and "multiples of 8" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# CUDA provider (onnxruntime-gpu on a GPU machine).


needs_ort_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ORT_PROVIDERS,
    reason="onnxruntime here has no CUDAExecutionProvider: it is the CPU-only onnxruntime package, not "
    "onnxruntime-gpu (README: onnxruntime-gpu on a machine without network)",
)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_ort_cuda
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_cuda_provider_places_every_node_on_the_gpu(exported, reference, dtype):
    session = OrtFlowSession(exported["large", dtype].path, providers="cuda")
    assert session.providers[0] == "CUDAExecutionProvider"  # OrtFlowSession raises otherwise
    assert not session.cpu_nodes, session.cpu_nodes
    images = [to_tensor(reference[k]).cuda() for k in ("image1", "image2")]
    flow = session(*images)  # IO binding: CUDA in, CUDA out
    assert flow.is_cuda
    assert rel_error(flow[0].cpu(), reference["official_large_flow"]) < TOLERANCE[dtype]
    host = session(reference["image1"], reference["image2"])
    assert rel_error(host[0], flow[0].cpu()) < 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(
    "TensorrtExecutionProvider" not in ORT_PROVIDERS,
    reason="onnxruntime here has no TensorrtExecutionProvider (onnxruntime-gpu has it; TensorRT itself is separate)",
)
def test_tensorrt_keeps_its_engine_for_the_next_session(exported, reference, tmp_path):
    path = exported["small", "fp32"].path
    try:
        first = OrtFlowSession(path, providers="tensorrt", trt_cache_dir=tmp_path)
    except ProviderError as error:  # onnxruntime-gpu lists TensorRT whether or not its libraries are here
        pytest.skip(f"TensorRT did not load: {error}")
    flow = first(reference["image1"], reference["image2"])
    engines, _ = trt_cache_folders(path, tmp_path)
    assert [p for p in engines.iterdir() if p.is_file()], "TensorRT wrote no engine to its cache"
    again = OrtFlowSession(path, providers="tensorrt", trt_cache_dir=tmp_path)(reference["image1"], reference["image2"])
    assert rel_error(again, flow) < 1e-6
    # TensorRT runs float32 layers in TF32 unless told otherwise (ONNX Runtime has no option for it).
    assert rel_error(flow[0], reference["official_small_flow"]) < 1e-2
