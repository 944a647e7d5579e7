"""Training: the published sequence loss, and resuming reproduces an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch

import raft_engine.train as training
from raft_engine.train import TrainConfig, sequence_loss, train


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
        steps=3,
        batch_size=1,
        height=128,
        width=128,
        iters=2,
        checkpoint_every=1,
        validate_every=2,
        validation_pairs=1,
        threads=1,
    )
    reference = train(config, tmp_path / "straight", device="cpu")

    original = training.scene_batch
    calls = {"count": 0}

    def failing(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "scene_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", device="cpu")
    monkeypatch.setattr(training, "scene_batch", original)
    resumed = train(config, tmp_path / "resumed", device="cpu")

    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert "val_epe" in log[1]
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["config"]["height"] == 128


def test_changed_configuration_is_refused(tmp_path):
    config = TrainConfig(steps=1, batch_size=1, height=128, width=128, iters=1, validation_pairs=1, threads=1)
    train(config, tmp_path, device="cpu")
    with pytest.raises(ValueError, match="another configuration"):
        train(TrainConfig(**{**config.__dict__, "lr": 1e-3}), tmp_path, device="cpu")
