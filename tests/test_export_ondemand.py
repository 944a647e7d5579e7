"""ONNX at any size: the on-demand correlation in standard operators, dynamic sizes, corr="auto"."""

from __future__ import annotations

import onnx
import pytest
import torch
from conftest import rel_error
from PIL import Image

from raft_engine import FlowEngine
from raft_engine.cli import main
from raft_engine.export import OrtFlowSession, export_onnx, onnx_export
from raft_engine.export.limits import check_ondemand_tensors, ondemand_tensor_elements
from raft_engine.export.onnx_export import DEFAULT_CORR_BUDGET, TOLERANCE, resolve_corr
from raft_engine.io import read_flo
from raft_engine.model.config import RAFTConfig
from raft_engine.scenes import scene_tensors

ITERS = 3  # the graph's size, and the export's time, grow with the unrolled iterations
# ONNX Runtime's CPU provider against FlowEngine (PyTorch float32), relative L2 error of the flow:
# measured 7e-7..3e-6 for the on-demand graphs here (fixed and dynamic size, small and large), so 2e-5
# leaves a margin of 6x and is 5x under the export's own threshold, TOLERANCE["fp32"].
ONDEMAND_VS_PYTORCH = 2e-5


def engine_flow(model, image1, image2, corr):
    engine = FlowEngine(model, device="cpu", backend="torch", corr=corr)
    return engine.estimate(image1, image2, iters=ITERS).flow


@pytest.fixture(scope="module")
def small_graphs(tmp_path_factory, official_small):
    """RAFT-small at 128x160: the on-demand graph in fp32 and fp16, and the dense one."""
    folder = tmp_path_factory.mktemp("ondemand")
    return {
        (corr, dtype): export_onnx(
            official_small, folder / f"{corr}-{dtype}.onnx", iters=ITERS, height=128, width=160, dtype=dtype, corr=corr
        )
        for corr, dtype in [("ondemand", "fp32"), ("ondemand", "fp16"), ("volume", "fp32")]
    }


def repeated_dimensions(path, cells: int) -> list[str]:
    """The tensors of an ONNX graph (after shape inference) with the 1/8 grid's cell count in two
    dimensions: the all-pairs volume's signature."""
    inferred = onnx.shape_inference.infer_shapes(onnx.load(path))
    found = []
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if dims.count(cells) >= 2:
            found.append(value.name)
    return found


def test_ondemand_graph_equals_the_dense_graph_and_the_engine(small_graphs, official_small):
    ondemand, dense = small_graphs["ondemand", "fp32"], small_graphs["volume", "fp32"]
    assert (ondemand.corr, dense.corr) == ("ondemand", "volume")
    # No all-pairs volume in the on-demand graph, (16 * 20)^2 elements here; the dense graph has it.
    assert not repeated_dimensions(ondemand.path, 16 * 20)
    assert repeated_dimensions(dense.path, 16 * 20)
    ops = {node.op_type for node in onnx.load(ondemand.path).graph.node}
    assert "GridSample" not in ops and {"Gather", "MatMul"} <= ops
    image1, image2, _ = scene_tensors([3], 123, 157)  # padded to 128x160 by the session
    ondemand_flow = OrtFlowSession(ondemand.path, providers="cpu").estimate(image1, image2).flow
    dense_flow = OrtFlowSession(dense.path, providers="cpu").estimate(image1, image2).flow
    assert ondemand_flow.shape == (1, 2, 123, 157)
    assert rel_error(ondemand_flow, dense_flow) < ONDEMAND_VS_PYTORCH
    for corr in ("ondemand", "volume"):
        assert rel_error(ondemand_flow, engine_flow(official_small, image1, image2, corr)) < ONDEMAND_VS_PYTORCH
    session = OrtFlowSession(ondemand.path, providers="cpu")
    assert session.corr == "ondemand" and (session.height, session.width) == (128, 160)
    assert session.metadata["raft_engine.corr"] == "ondemand"


def test_ondemand_fp16_graph_is_within_the_half_precision_tolerance(small_graphs, official_small):
    image1, image2, _ = scene_tensors([4], 128, 160)
    flow = OrtFlowSession(small_graphs["ondemand", "fp16"].path, providers="cpu").estimate(image1, image2).flow
    error = rel_error(flow, engine_flow(official_small, image1, image2, "volume"))
    # Half precision's error, measured 1.1e-3 here: under the fp16 tolerance and over float32's 1e-5.
    assert 1e-5 < error < TOLERANCE["fp16"]


def test_dynamic_size_graph_serves_three_sizes_from_one_file(tmp_path, official_large):
    """RAFT-large (convex upsampling) with any size and batch; corr="auto" takes the on-demand path."""
    report = export_onnx(
        official_large, tmp_path / "any.onnx", iters=ITERS, height=136, width=176, dynamic_size=True, dynamic_batch=True
    )
    assert (report.corr, report.dynamic_size, report.batch) == ("ondemand", True, "dynamic")
    assert report.relative_error < ONDEMAND_VS_PYTORCH  # the export's check, at 136x176 and at 128x136
    graph = onnx.load(report.path)
    for value in [*graph.graph.input, *graph.graph.output]:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert isinstance(dims[0], str) and isinstance(dims[2], str) and isinstance(dims[3], str), dims
    session = OrtFlowSession(report.path, providers="cpu")
    assert session.dynamic_size and session.height is None and session.min_size == 128
    # Three sizes, one of them padded (133x171 -> 136x176), one a batch of two, one portrait.
    for seeds, height, width in [([0], 128, 128), ([1, 2], 133, 171), ([3], 200, 136)]:
        image1, image2, _ = scene_tensors(seeds, height, width)
        flow = session.estimate(image1, image2).flow
        assert flow.shape == (len(seeds), 2, height, width)
        assert rel_error(flow, engine_flow(official_large, image1, image2, "volume")) < ONDEMAND_VS_PYTORCH


def test_ondemand_graphs_stay_within_32_bit_indexing():
    # RAFT-large gathers (2r+2) * D = 10 * 256 elements per cell and level: one 4320x7680 pair (518,400
    # cells) or 6 pairs at 2160x3840 fit 2^31-1, 7 do not; at 1088x1920 the encoder's first activation
    # (2 * 64 channels at half size) is the smaller of the two.
    assert ondemand_tensor_elements(1, 4320, 7680) == 518_400 * 2560
    assert ondemand_tensor_elements(6, 2160, 3840) == 6 * 129_600 * 2560
    check_ondemand_tensors(6, 2160, 3840)
    with pytest.raises(ValueError, match="batch 7 at 2160x3840 .* 2,322,432,000 elements.*at most 6"):
        check_ondemand_tensors(7, 2160, 3840)
    with pytest.raises(ValueError, match="even one pair is too large"):
        check_ondemand_tensors(1, 8192, 8192)
    assert ondemand_tensor_elements(1, 8192, 8192, "small") == 1024**2 * 8 * 128  # small: 8 * 128 per cell


def test_corr_auto_takes_the_volume_while_it_fits():
    large = RAFTConfig.large()
    # 440x1024 (Sintel padded): 55 x 128 cells, a dense pyramid of 0.26 GB: the volume.
    assert resolve_corr("auto", large, 1, 440, 1024, False, DEFAULT_CORR_BUDGET)[0] == "volume"
    # 1088x1920: 5.7 GB (5.27 GiB), over the 2 GiB budget; and with a budget of 1 TB, over 2^31-1 elements at batch 3.
    corr, reason = resolve_corr("auto", large, 1, 1088, 1920, False, DEFAULT_CORR_BUDGET)
    assert corr == "ondemand" and "5.27 GiB, budget 2.00 GiB" in reason
    assert resolve_corr("auto", large, 2, 1088, 1920, False, 1e12)[0] == "volume"
    corr, reason = resolve_corr("auto", large, 3, 1088, 1920, False, 1e12)
    assert corr == "ondemand" and "2,147,483,647 elements" in reason
    assert resolve_corr("auto", large, 1, 128, 160, True, DEFAULT_CORR_BUDGET)[0] == "ondemand"
    assert resolve_corr("volume", large, 1, 1088, 1920, False, DEFAULT_CORR_BUDGET)[0] == "volume"


def test_export_refuses_bad_requests_before_any_work(official_small, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("export_onnx went on to trace a graph it should have refused")

    monkeypatch.setattr(onnx_export, "scene_tensors", no_work)
    monkeypatch.setattr(torch.onnx, "export", no_work)
    path = tmp_path / "x.onnx"
    cases = [
        (dict(height=130, width=160), "multiples of 8, got 130x160"),
        (dict(height=120, width=160), "120x160 is too small for RAFT: at least 128x128"),
        (dict(height=128, width=160, corr="dense"), r"unknown corr 'dense'; expected one of \('auto', 'volume', "),
        (dict(height=128, width=160, dynamic_size=True, corr="volume"), "dynamic_size=True needs corr='ondemand'"),
        (dict(height=128, width=160, corr_budget=0), "corr_budget must be a positive number of bytes"),
        (dict(height=160, width=160, dynamic_size=True), "unequal height and width, got 160x160"),
        (dict(height=128, width=8200, dynamic_size=True), "sides up to 8192"),
        (dict(height=None, width=160), "height and width are required"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            export_onnx(official_small, path, iters=1, **options)
    # 1088x1920, batch 3, asked for the volume: past 2^31-1 elements (corr="auto" would go on-demand).
    with pytest.raises(ValueError, match="3,196,108,800 elements"):
        export_onnx(official_small, path, iters=1, height=1088, width=1920, batch=3, corr="volume")
    # On-demand has its bound too: 3 pairs at 8192x8192 gather 3 * 1024^2 cells * 8 corners * 128 channels.
    with pytest.raises(ValueError, match="on-demand RAFT-small graph a tensor of 3,221,225,472 elements.*at most 1"):
        export_onnx(official_small, path, iters=1, height=8192, width=8192, batch=3, corr="ondemand")
    assert not list(tmp_path.iterdir())


def test_sessions_refuse_sizes_the_graph_does_not_take(small_graphs, tmp_path, official_small):
    fixed = OrtFlowSession(small_graphs["ondemand", "fp32"].path, providers="cpu")
    image = torch.full((1, 3, 136, 160), 128.0)
    with pytest.raises(ValueError, match="images of 136x160 pad to 136x160: this graph was exported for 128x160"):
        fixed.estimate(image, image)
    with pytest.raises(ValueError, match="a graph exported with --dynamic-size .* takes every size"):
        fixed.estimate(image, image)
    with pytest.raises(ValueError, match="this graph was exported for 128x160, got 136x160"):
        fixed.run(image, image)
    report = export_onnx(
        official_small, tmp_path / "any.onnx", iters=1, height=128, width=136, dynamic_size=True, verify=False
    )
    session = OrtFlowSession(report.path, providers="cpu")
    odd = torch.full((1, 3, 130, 170), 128.0)
    with pytest.raises(ValueError, match="takes heights and widths that are multiples of 8, got 130x170: pad"):
        session.run(odd, odd)
    small = torch.full((1, 3, 60, 170), 128.0)
    with pytest.raises(ValueError, match="images of 60x170 pad to 64x176: .* sides from 128 to 8192"):
        session.estimate(small, small)
    # Padded by the session instead, the odd size runs.
    image1, image2, _ = scene_tensors([5], 130, 170)
    assert session.estimate(image1, image2).flow.shape == (1, 2, 130, 170)
    # run() takes a padded batch as it is and returns the padded flow.
    padded1, padded2, _ = scene_tensors([5], 136, 176)
    result = session.run(padded1, padded2)
    assert result["flow"].shape == (1, 2, 136, 176) and "flow_low" not in result


def test_flow_command_runs_a_dynamic_size_graph_on_frames_of_any_size(tmp_path, official_small, capsys):
    report = export_onnx(
        official_small, tmp_path / "any.onnx", iters=1, height=128, width=136, dynamic_size=True, verify=False
    )
    for height, width in ((130, 170), (151, 203)):
        image1, image2, _ = scene_tensors([5], height, width)
        frames = []
        for k, image in enumerate((image1, image2)):
            frames.append(tmp_path / f"{height}-{k}.png")
            Image.fromarray(image[0].permute(1, 2, 0).to(torch.uint8).numpy()).save(frames[-1])
        out = tmp_path / f"{height}.flo"
        args = ["flow", *map(str, frames), "--onnx", str(report.path), "-o", str(tmp_path / "f.png"), "--flo", str(out)]
        assert main(args) == 0, capsys.readouterr().err
        assert read_flo(out).shape == (height, width, 2)
