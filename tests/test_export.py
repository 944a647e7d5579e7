"""ONNX export and ONNX Runtime serving (CPU provider here; the CUDA variants carry the gpu marker)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from conftest import rel_error, to_tensor
from PIL import Image
from synthetic import synthetic_state_dict

from raft_engine import FlowEngine
from raft_engine.cli import main
from raft_engine.export import ExportError, OrtFlowSession, export_onnx
from raft_engine.export.onnx_export import TOLERANCE

TOLERANCE_VS_PYTORCH = 1e-4


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


@pytest.mark.parametrize("variant", ["small", "large"])
def test_fp16_export_stays_within_its_tolerance(exported, reference, variant):
    report = exported[variant, "fp16"]
    assert report.relative_error < TOLERANCE["fp16"]
    model = onnx.load(str(report.path))
    # The lookup (GridSample) and InstanceNorm run on float32 inputs: their inputs come from float32 values.
    graph_types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type in ("GridSample", "InstanceNormalization") and node.input[0] in graph_types:
            assert graph_types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
    flow = OrtFlowSession(report.path, providers="cpu")(reference["image1"], reference["image2"])
    assert rel_error(flow[0], reference[f"official_{variant}_flow"]) < TOLERANCE["fp16"]


def test_dynamic_batch_and_flow_low(tmp_path, official_small, reference):
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

    original = onnx_export._verify

    def skewed(*args):
        relative, max_abs = original(*args)
        return relative + 1.0, max_abs

    export_onnx(official_small, tmp_path / "x.onnx", iters=1, height=128, width=160)
    good = (tmp_path / "x.onnx").read_bytes()
    monkeypatch.setattr(onnx_export, "_verify", skewed)
    with pytest.raises(ExportError, match="differs from PyTorch's.*nothing was written"):
        export_onnx(official_small, tmp_path / "x.onnx", iters=2, height=128, width=160)
    assert (tmp_path / "x.onnx").read_bytes() == good  # the earlier good export is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["x.onnx"]  # and no partial file is left


def test_session_errors(exported, reference, tmp_path):
    path = exported["small", "fp32"].path
    session = OrtFlowSession(path, providers="cpu")
    with pytest.raises(ValueError, match="exported for 128x160; images of 200x160 pad to 200x160"):
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_cuda_provider_places_every_node_on_the_gpu(exported, reference, dtype):
    session = OrtFlowSession(exported["large", dtype].path, providers="cuda")
    assert session.providers[0] == "CUDAExecutionProvider"
    assert not session.cpu_nodes, session.cpu_nodes
    images = [to_tensor(reference[k]).cuda() for k in ("image1", "image2")]
    flow = session(*images)  # IO binding: CUDA in, CUDA out
    assert flow.is_cuda
    assert rel_error(flow[0].cpu(), reference["official_large_flow"]) < TOLERANCE[dtype]
    host = session(reference["image1"], reference["image2"])
    assert rel_error(host[0], flow[0].cpu()) < 1e-6
