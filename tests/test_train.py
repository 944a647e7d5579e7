"""Training: the published sequence loss, and resuming reproduces an uninterrupted run."""

from __future__ import annotations

import json
import shlex

import pytest
import torch

import raft_engine.training.loop as training
from raft_engine import RAFT, RAFTConfig
from raft_engine.cli import main as cli_main
from raft_engine.training.loop import TrainConfig, sequence_loss, train, training_predictions


def main(argv: list[str]) -> int:
    """The training command line, as `raft-engine train` runs it."""
    return cli_main(["train", *argv])


def test_sequence_loss_weights_and_max_flow():
    flow = torch.zeros(1, 2, 4, 4)
    flow[0, 0, 0, 0] = 500.0  # longer than max_flow: excluded
    predictions = [flow + 1.0, flow + 0.5]
    loss, metrics = sequence_loss(predictions, flow, gamma=0.8, max_flow=400.0)
    # (2 channels x 15 valid pixels) of |error| over 2 x 16 entries, weighted 0.8 then 1.
    expected = (0.8 * 1.0 + 1.0 * 0.5) * 30 / 32
    assert float(loss) == pytest.approx(expected)
    assert metrics["epe"] == pytest.approx(0.5 * 2**0.5)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, monkeypatch):
    config = TrainConfig(
        steps=4,
        batch_size=1,
        height=128,
        width=128,
        iters=2,
        checkpoint_every=2,
        validate_every=2,
        validation_pairs=1,
        threads=1,
    )
    reference = train(config, tmp_path / "straight", device="cpu")

    original = training.scene_batch
    calls = {"count": 0}

    def failing(*args, **kwargs):
        # Calls: step 1, step 2, validation at 2, step 3, step 4: fail at step 4, after step 3 was
        # logged but not checkpointed.
        calls["count"] += 1
        if calls["count"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "scene_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", device="cpu")
    logged = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]
    monkeypatch.setattr(training, "scene_batch", original)
    resumed = train(config, tmp_path / "resumed", device="cpu")

    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]  # step 3 redone once, logged once
    assert "val_epe" in log[1] and "val_epe" in log[3]
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["config"]["height"] == 128


# A held-out set for the packaging tests: the real one (train.HELD_OUT, 8 pairs at 384x512, 12
# iterations) took 30 s of each test on 2 cores to evaluate a model trained for one step; this one,
# 2 pairs at 128x128 with 2 iterations, under 1 s. `package` writes the set it evaluated into the record.
SMALL_HELD_OUT = {"seeds": [0, 1], "height": 128, "width": 128, "iters": 2}


@pytest.fixture
def small_held_out(monkeypatch):
    monkeypatch.setattr(training, "HELD_OUT", SMALL_HELD_OUT)
    return SMALL_HELD_OUT


def packaged_epe(path) -> float:
    """The packaged weights' mean EPE on SMALL_HELD_OUT, loaded as a user loads them, as the record rounds it."""
    from raft_engine import load_model
    from raft_engine.training.loop import validation_epe

    model = load_model(path)
    held_out = SMALL_HELD_OUT
    return round(
        validation_epe(model, held_out["seeds"], held_out["height"], held_out["width"], held_out["iters"], "cpu"), 4
    )


def test_package_writes_the_weights_and_their_record(tmp_path, small_held_out):
    from raft_engine import load_model
    from raft_engine.training.loop import package

    config = TrainConfig(steps=1, batch_size=1, height=128, width=128, iters=1, validation_pairs=1, threads=1)
    trained = train(config, tmp_path / "run", device="cpu")
    record = package(tmp_path / "run", tmp_path / "out", notes={"code": "test"})
    assert record["steps"] == 1 and record["code"] == "test" and record["stored_dtype"] == "float16"
    assert record["held_out"] == {**small_held_out, "epe": packaged_epe(tmp_path / "out" / "builtin-small.pth")}
    assert record["held_out"]["epe"] > 0
    assert json.loads((tmp_path / "out" / "builtin-small.json").read_text()) == record
    packaged = load_model(tmp_path / "out" / "builtin-small.pth")
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(packaged.state_dict()[key], value.half().float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="stopped at step 1 of 2"):
        train_config = TrainConfig(**{**config.__dict__, "steps": 2})
        state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
        state["config"] = train_config.__dict__
        torch.save(state, tmp_path / "run" / "checkpoint.pth")
        package(tmp_path / "run", tmp_path / "out2")


def test_changed_configuration_is_refused(tmp_path):
    config = TrainConfig(steps=1, batch_size=1, height=128, width=128, iters=1, validation_pairs=1, threads=1)
    train(config, tmp_path, device="cpu")
    with pytest.raises(ValueError, match="another configuration"):
        train(TrainConfig(**{**config.__dict__, "lr": 1e-3}), tmp_path, device="cpu")


def test_command_line_trains_and_packages(tmp_path, capsys, small_held_out):
    args = [str(tmp_path / "run"), "--steps", "1", "--batch-size", "1", "--height", "128", "--width", "128",
            "--iters", "1", "--validation-pairs", "1", "--device", "cpu",
            "--package", str(tmp_path / "out")]  # fmt: skip
    main(args)
    record = json.loads((tmp_path / "out" / "builtin-small.json").read_text())
    assert record["command"] == "raft-engine train " + shlex.join(args)
    assert record["config"]["height"] == 128 and record["steps"] == 1
    assert record["held_out"] == {**small_held_out, "epe": packaged_epe(tmp_path / "out" / "builtin-small.pth")}
    assert f"held-out EPE {record['held_out']['epe']} px" in capsys.readouterr().out


def test_scene_style_and_init_are_configuration(tmp_path, monkeypatch):
    """--scenes/--without choose the generator's style for every training batch and are recorded;
    --init starts from given weights (with lr 0 the weights stay exactly those)."""
    from raft_engine import load_model
    from raft_engine.scenes import SceneStyle

    seen = []
    original = training.scene_tensors

    def recording(seeds, height, width, max_displacement=None, style=None):
        seen.append(style)
        return original(seeds, height, width, max_displacement, style=style)

    monkeypatch.setattr(training, "scene_tensors", recording)
    config = TrainConfig(steps=1, batch_size=1, height=128, width=128, iters=1, lr=0.0, validation_pairs=1, threads=1,
                         scenes="v2", without="blur,textures", init="builtin")  # fmt: skip
    model = train(config, tmp_path, device="cpu")
    expected = SceneStyle.v2().without("blur", "textures")
    assert seen[0] == expected and not expected.blur and not expected.photos and expected.camera
    assert all(style is None or style.is_v1 for style in seen[1:])  # validation: v1's held-out seeds
    builtin = load_model("builtin")
    for key, value in builtin.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["scenes"] == "v2" and summary["config"]["without"] == "blur,textures"
    assert summary["config"]["init"] == "builtin" and summary["scene_style"]["blur"] is False
    assert summary["scene_style"]["camera"] is True
    with pytest.raises(ValueError, match="unknown scene ingredient 'fog'"):
        TrainConfig(scenes="v2", without="fog")
    # 64x64 trained to a NaN loss at step 1 (a 1x1 coarsest correlation level): refused up front.
    with pytest.raises(ValueError, match="at least 128x128, got 64x64"):
        TrainConfig(height=64, width=64)


def test_package_records_real_image_results(tmp_path, small_held_out):
    results = {"methods": {"builtin": {"photos": {"epe": 1.5}}}}
    (tmp_path / "real.json").write_text(json.dumps(results))
    args = [str(tmp_path / "run"), "--steps", "1", "--batch-size", "1", "--height", "128", "--width", "128",
            "--iters", "1", "--validation-pairs", "1", "--device", "cpu", "--scenes", "v2", "--without", "blur",
            "--package", str(tmp_path / "out"), "--real-images", str(tmp_path / "real.json")]  # fmt: skip
    main(args)
    record = json.loads((tmp_path / "out" / "builtin-small.json").read_text())
    assert record["real_images"] == results
    assert record["config"]["scenes"] == "v2" and record["scene_style"]["blur"] is False


def test_workers_and_time_limit_change_nothing_in_the_result(tmp_path):
    """Batches made in worker processes are the batches made in-process, and a run stopped by its
    time limit and continued ends where an uninterrupted run ends, bit for bit."""
    from raft_engine.training.loop import run_finished

    config = TrainConfig(steps=3, batch_size=2, height=128, width=128, iters=1, validation_pairs=1, threads=1,
                         scenes="v2")  # fmt: skip
    reference = train(config, tmp_path / "straight", device="cpu")
    assert run_finished(tmp_path / "straight")
    # The batches carry images as uint8: exactly the generator's float images (whole numbers 0..255).
    from raft_engine.training.loop import TrainingBatches, scene_batch

    batches = TrainingBatches(config)
    made = scene_batch(batches.seeds(1), 128, 128, config.max_displacement, torch.device("cpu"), config.style())
    for carried, generated in zip(batches[1], made, strict=True):
        torch.testing.assert_close(carried.float(), generated, rtol=0, atol=0)

    train(config, tmp_path / "split", device="cpu", workers=2, time_limit=1e-9)  # stops after the first step
    assert not run_finished(tmp_path / "split")
    assert torch.load(tmp_path / "split" / "checkpoint.pth", weights_only=True)["step"] == 1
    resumed = train(config, tmp_path / "split", device="cpu", workers=2)  # steps 2 and 3 from different workers
    assert run_finished(tmp_path / "split")
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)
    logged = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    straight = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert [r["loss"] for r in logged] == [r["loss"] for r in straight]
    assert all(0 <= r["data_s"] <= r["step_s"] for r in logged)
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert [call["steps"] for call in summary["calls"]] == [[0, 1], [1, 3]]
    assert summary["device"] == summary["calls"][0]["device"] and summary["torch"] == torch.__version__

    # Calling a finished run again trains nothing and keeps its summary (the machines that trained it).
    (tmp_path / "split" / "summary.json").write_text(json.dumps({**summary, "device": "the training machine"}))
    again = train(config, tmp_path / "split", device="cpu", workers=2)
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["device"] == "the training machine"
    assert len((tmp_path / "split" / "log.jsonl").read_text().splitlines()) == 3
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0, msg=key)
    # A new run in a folder whose checkpoint was removed does not pass for finished before its end.
    (tmp_path / "split" / "checkpoint.pth").unlink()
    train(config, tmp_path / "split", device="cpu", time_limit=1e-9)
    assert not run_finished(tmp_path / "split")

    with pytest.raises(ValueError, match="workers must be >= 0, got -1"):
        train(config, tmp_path / "bad", device="cpu", workers=-1)
    with pytest.raises(ValueError, match="time_limit must be a positive number of seconds, got 0"):
        train(config, tmp_path / "bad", device="cpu", time_limit=0)


def test_command_line_time_limit_stops_without_packaging(tmp_path, capsys, small_held_out):
    args = [str(tmp_path / "run"), "--steps", "2", "--batch-size", "1", "--height", "128", "--width", "128",
            "--iters", "1", "--validation-pairs", "1", "--device", "cpu", "--time-limit", "1e-9",
            "--package", str(tmp_path / "out")]  # fmt: skip
    main(args)
    assert "stopped at step 1 of 2 (time limit); run the same command again" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
    main(args)  # the second call does step 2 (the limit is reached by then too) and packages
    assert json.loads((tmp_path / "out" / "builtin-small.json").read_text())["steps"] == 2
    for bad, message in [
        (["--height", "100"], "training size must be a multiple of 8, got 100x256"),
        (["--workers", "-2"], "--workers must be >= 0, got -2"),
        (["--time-limit", "0"], "--time-limit must be a positive number of seconds, got 0.0"),
        (["--real-images", "r.json"], "--real-images is recorded by --package; give both"),
    ]:
        assert main([str(tmp_path / "run2"), *bad]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def test_a_packaged_large_model_loads_as_builtin_large(tmp_path, monkeypatch, small_held_out):
    import raft_engine.weights as weights
    from raft_engine import load_model
    from raft_engine.training.loop import package

    monkeypatch.setattr(weights, "BUILTIN_DIR", tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="ships no built-in RAFT-large .no builtin-large.pth.; .*: none"):
        load_model("builtin-large")
    config = TrainConfig(variant="large", steps=1, batch_size=1, height=128, width=128, iters=1, validation_pairs=1,
                         threads=1)  # fmt: skip
    trained = train(config, tmp_path / "run", device="cpu")
    record = package(tmp_path / "run", tmp_path / "data")
    assert record["config"]["variant"] == "large" and weights.builtin_record("large") == record
    packaged = load_model("builtin-large")
    assert packaged.config.variant == "large"
    for key, value in trained.state_dict().items():  # float tensors stored as float16; BatchNorm's counts as they are
        expected = value.half().float() if value.is_floating_point() else value
        torch.testing.assert_close(packaged.state_dict()[key], expected, rtol=0, atol=0, msg=key)
    with pytest.raises(FileNotFoundError, match="built-in weights are missing"):
        load_model("builtin")  # this data folder holds the large model only


@pytest.mark.parametrize("variant", ["small", "large"])
def test_the_training_loop_ends_where_the_model_does(variant):
    """Training observes the model's own loop and upsamples every iteration; its last prediction is the
    model's flow."""
    torch.manual_seed(3)
    model = RAFT(RAFTConfig.from_variant(variant)).eval()
    image1, image2 = torch.rand(2, 1, 3, 128, 128) * 255
    with torch.no_grad():
        expected = model(image1, image2, iters=3).flow
        predictions = training_predictions(model, image1, image2, 3)
    assert len(predictions) == 3
    torch.testing.assert_close(predictions[-1], expected, rtol=0, atol=0)
