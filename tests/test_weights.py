"""Checkpoint loading: formats, layouts, strictness, safety, presets with download and cache."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import socket
import stat
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from synthetic import synthetic_state_dict

import raft_engine.weights as weights
from raft_engine import RAFT, load_model
from raft_engine.weights import DownloadError, WeightsError, WeightsPreset


def _same_weights(a: RAFT, b: RAFT) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def small_state():
    return synthetic_state_dict("official_small")


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_torch_files_with_and_without_module_prefix(tmp_path, small_state, official_small, suffix, prefix):
    path = tmp_path / f"raft-small{suffix}"
    torch.save({prefix + k: v for k, v in small_state.items()}, path)
    model = load_model(path)
    assert not model.training
    assert _same_weights(model, official_small)


def test_safetensors_file(tmp_path, small_state, official_small):
    from safetensors.torch import save_file

    path = tmp_path / "raft-small.safetensors"
    save_file(small_state, str(path))
    assert _same_weights(load_model(str(path)), official_small)


def test_torchvision_layout_is_converted():
    model = load_model(synthetic_state_dict("torchvision_large"))
    tv = synthetic_state_dict("torchvision_large")
    assert model.config.variant == "large"
    assert torch.equal(model.update_block.gru.convz2.weight, tv["update_block.recurrent_block.convgru2.convz.weight"])
    assert torch.equal(model.update_block.mask[2].bias, tv["mask_predictor.conv.bias"])
    assert torch.equal(
        model.cnet.layer2[0].downsample[1].running_var, tv["context_encoder.layer2.0.downsample.1.running_var"]
    )


def test_wrapped_training_checkpoint(tmp_path, small_state, official_small):
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": small_state, "epoch": 3}, path)
    assert _same_weights(load_model(path), official_small)


def test_variant_is_inferred_and_checked(small_state):
    assert load_model(small_state).config.variant == "small"
    assert load_model(small_state, variant="small").config.variant == "small"
    with pytest.raises(WeightsError, match="variant='large' was requested.*RAFT-small"):
        load_model(small_state, variant="large")
    with pytest.raises(ValueError, match="unknown RAFT variant 'medium'"):
        load_model(small_state, variant="medium")


def test_every_problem_is_reported_at_once(small_state):
    state = dict(small_state)
    del state["update_block.gru.convq.bias"]
    state["update_block.extra.weight"] = torch.zeros(3)
    state["fnet.conv2.weight"] = torch.zeros(64, 96, 1, 1)
    with pytest.raises(WeightsError) as error:
        load_model(state)
    message = str(error.value)
    assert "missing keys: 'update_block.gru.convq.bias'" in message
    assert "unexpected keys: 'update_block.extra.weight'" in message
    assert "fnet.conv2.weight: checkpoint (64, 96, 1, 1) vs model (128, 96, 1, 1)" in message


def test_torchvision_extra_key_is_not_dropped():
    state = synthetic_state_dict("torchvision_small")
    state["update_block.recurrent_block.convgru2.convz.weight"] = torch.zeros(96, 242, 3, 3)
    with pytest.raises(WeightsError, match="unexpected keys"):
        load_model(state)


def test_unknown_layout_and_bad_contents(small_state):
    with pytest.raises(WeightsError, match="unrecognised state dict.*'backbone.weight'"):
        load_model({"backbone.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="mixes keys with and without the 'module.' prefix"):
        load_model({"module.fnet.conv1.weight": torch.zeros(1), "fnet.conv1.bias": torch.zeros(1)})
    with pytest.raises(WeightsError, match="not a state dict.*'note'"):
        load_model({**small_state, "note": "trained on things"})
    with pytest.raises(
        WeightsError, match=r"cannot tell the RAFT variant: fnet.conv1.weight has shape \(48, 3, 7, 7\)"
    ):
        load_model({**small_state, "fnet.conv1.weight": torch.zeros(48, 3, 7, 7)})


def test_duplicate_shortcut_norms(official_large):
    state = synthetic_state_dict("official_large")
    with pytest.warns(UserWarning, match="duplicate shortcut-norm entries differ"):
        first = load_model(state)
    assert _same_weights(first, official_large)
    # In a real checkpoint both names hold one module: no warning, same result.
    consistent = dict(state)
    for key in state:
        if ".norm3." in key:
            consistent[key] = state[key.replace(".norm3.", ".downsample.1.")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _same_weights(load_model(consistent), official_large)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited",))


def test_checkpoints_never_execute_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"fnet.conv1.weight": _Exploit()}, f, protocol=2)
    with pytest.raises(WeightsError, match="holds Python objects besides tensors .posix.system., which a weights-only"):
        load_model(path)
    assert not (tmp_path / "exploited").exists()


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a weights name either"):
        load_model(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="raft-large-things"):
        load_model("raft-huge")
    (tmp_path / "weights.ckpt").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unsupported checkpoint type '.ckpt'"):
        load_model(tmp_path / "weights.ckpt")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="broken.pth is not a PyTorch checkpoint: it is damaged, or another kind"):
        load_model(tmp_path / "broken.pth")


# ------------------------------------------------------------------------------------------------
# Presets, against a local HTTP server.


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("RAFT_ENGINE_CACHE", str(folder))
    return folder


def _publish(root: Path, base_url: str, state, monkeypatch, name="test-small", prefix=None) -> WeightsPreset:
    filename = "raft_test_small.pth"
    torch.save(state, root / filename)
    digest = hashlib.sha256((root / filename).read_bytes()).hexdigest()
    preset = WeightsPreset(name, f"{base_url}/{filename}", prefix or digest[:8], "small", "test weights")
    monkeypatch.setitem(weights.PRESETS, name, preset)
    return preset


@pytest.fixture
def hub_calls(monkeypatch):
    """The calls to torch.hub.download_url_to_file, which still downloads (the real one is called)."""
    calls = []
    real = torch.hub.download_url_to_file

    def recording(url, dst, hash_prefix=None, progress=True):
        calls.append({"url": url, "dst": Path(dst), "hash_prefix": hash_prefix, "progress": progress})
        return real(url, dst, hash_prefix, progress)

    monkeypatch.setattr(torch.hub, "download_url_to_file", recording)
    return calls


def test_preset_download_cache_and_offline(server, cache, small_state, official_small, monkeypatch, tmp_path):
    root, base_url = server
    preset = _publish(root, base_url, small_state, monkeypatch)
    assert _same_weights(load_model("test-small"), official_small)
    cached = cache / preset.filename
    assert cached.is_file()
    assert sorted(p.name for p in cache.iterdir()) == [preset.filename]  # no partial files left
    # Readable as any new file is (the umask's mode), not private like a mkstemp file.
    (tmp_path / "probe").write_bytes(b"")
    assert stat.S_IMODE(cached.stat().st_mode) == stat.S_IMODE((tmp_path / "probe").stat().st_mode)
    (root / preset.filename).unlink()  # the server no longer has it: works from the cache alone
    assert _same_weights(load_model("test-small"), official_small)


def test_download_goes_through_torch_hub(server, cache, small_state, monkeypatch, hub_calls):
    root, base_url = server
    preset = _publish(root, base_url, small_state, monkeypatch)
    path = weights.fetch_preset("test-small", progress=False)
    assert path == cache / preset.filename and path.is_file()
    assert len(hub_calls) == 1
    call = hub_calls[0]
    assert call["url"] == preset.url
    # Into the cache folder (so the final rename stays on one file system), under a name that is not the
    # cache name: only a verified file may take that one.
    assert call["dst"].parent == cache and call["dst"].name != preset.filename
    assert call["hash_prefix"] is None and call["progress"] is False
    assert weights.fetch_preset("test-small") == path
    assert len(hub_calls) == 1  # cached: no second download


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_or_on_request(server, cache, small_state, monkeypatch, hub_calls):
    root, base_url = server
    preset = _publish(root, base_url, small_state, monkeypatch)
    cases = [
        (_Terminal(), None, True),
        (io.StringIO(), None, False),
        (io.StringIO(), True, True),
        (_Terminal(), False, False),
    ]
    for stream, progress, shown in cases:
        (cache / preset.filename).unlink(missing_ok=True)
        monkeypatch.setattr(sys, "stderr", stream)
        weights.fetch_preset("test-small", progress=progress)
        assert hub_calls[-1]["progress"] is shown, (type(stream).__name__, progress)
        assert ("100%" in stream.getvalue()) is shown  # torch.hub's tqdm bar, or nothing at all
    assert len(hub_calls) == len(cases)


def test_preset_hash_mismatch_is_refused_and_not_cached(server, cache, small_state, monkeypatch):
    root, base_url = server
    _publish(root, base_url, small_state, monkeypatch, prefix="00000000")
    with pytest.raises(WeightsError, match="expected 00000000"):
        load_model("test-small")
    assert not cache.exists() or not any(cache.iterdir())


def test_corrupt_cache_entry_is_refused(server, cache, small_state, monkeypatch):
    root, base_url = server
    preset = _publish(root, base_url, small_state, monkeypatch)
    load_model("test-small")
    (cache / preset.filename).write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="corrupt or was replaced"):
        load_model("test-small")


def test_offline_and_not_cached(server, cache, small_state, monkeypatch):
    root, base_url = server
    preset = _publish(root, base_url, small_state, monkeypatch)
    (root / preset.filename).unlink()  # 404
    with pytest.raises(DownloadError, match="not in the cache either") as error:
        load_model("test-small")
    message = str(error.value)
    # One message: what failed and why, where the file belongs, and how to put it there by hand.
    assert f"from {preset.url} (File not found);" in message  # the server's reason for its 404
    assert f"({cache / preset.filename})" in message
    assert "copy the file there (the cache folder is set by RAFT_ENGINE_CACHE)" in message
    assert list(cache.iterdir()) == []
    unreachable = WeightsPreset("test-gone", "http://127.0.0.1:9/raft.pth", "00000000", "small", "")
    monkeypatch.setitem(weights.PRESETS, "test-gone", unreachable)
    with pytest.raises(DownloadError, match="could not download weights 'test-gone'"):
        load_model("test-gone")
    assert list(cache.iterdir()) == []


class _FaultyHandler(http.server.BaseHTTPRequestHandler):
    """Serves the server's `body` the way its `fault` says: cut short, or only after a long silence."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body, fault = self.server.body, self.server.fault
        if fault == "stall" and self.server.release.wait(5):
            return  # the test is over
        self.send_response(200)
        if fault == "chunked-cut":  # the first chunk, then the connection drops
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = body[: len(body) // 2]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if fault == "length-cut" else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def faulty_server(monkeypatch):
    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a client that gave up on a stalled answer is expected

    httpd = Server(("127.0.0.1", 0), _FaultyHandler)
    httpd.body = bytes(range(256)) * 4096  # 1 MiB: several of torch.hub's reads
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def serve(fault: str) -> WeightsPreset:
        httpd.fault = fault
        prefix = hashlib.sha256(httpd.body).hexdigest()[:8]
        preset = WeightsPreset(
            "test-faulty", f"http://127.0.0.1:{httpd.server_address[1]}/raft.pth", prefix, "small", ""
        )
        monkeypatch.setitem(weights.PRESETS, preset.name, preset)
        return preset

    yield serve
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


def test_faulty_server_serves_whole_files_when_told_to(faulty_server, cache, hub_calls):
    # The other faults below are faults of the server, not of this fixture.
    preset = faulty_server("none")
    path = weights.fetch_preset(preset.name, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == [preset.filename]
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith(preset.sha256_prefix)


def test_interrupted_download_leaves_nothing(faulty_server, cache, hub_calls):
    preset = faulty_server("chunked-cut")
    with pytest.raises(DownloadError, match="could not download weights 'test-faulty'.*IncompleteRead"):
        weights.fetch_preset(preset.name, progress=False)
    assert len(hub_calls) == 1
    assert list(cache.iterdir()) == []  # neither torch.hub's .partial file nor the staging file


def test_download_cut_short_of_its_length_is_refused(faulty_server, cache, hub_calls):
    # http.client ends such a response silently, as if complete: only the hash of the whole file tells.
    preset = faulty_server("length-cut")
    with pytest.raises(WeightsError, match=f"expected {preset.sha256_prefix}\\.\\.\\.; not cached"):
        weights.fetch_preset(preset.name, progress=False)
    assert list(cache.iterdir()) == []


def test_silent_server_times_out(faulty_server, cache, hub_calls):
    preset = faulty_server("stall")
    before = socket.getdefaulttimeout()
    start = time.monotonic()
    # Without the timeout the download would wait for the server's answer, 5 s later, and succeed.
    with pytest.raises(DownloadError, match="could not download weights 'test-faulty'.*timed out"):
        weights.fetch_preset(preset.name, timeout=0.5, progress=False)
    assert time.monotonic() - start < 4
    assert socket.getdefaulttimeout() == before  # the process-wide default is put back
    assert list(cache.iterdir()) == []


def test_plain_http_is_refused_beyond_this_machine(cache, monkeypatch):
    preset = WeightsPreset("test-http", "http://example.com/raft.pth", "00000000", "small", "")
    monkeypatch.setitem(weights.PRESETS, "test-http", preset)
    with pytest.raises(DownloadError, match="HTTPS required"):
        load_model("test-http")


def test_published_presets_point_to_torchvision_over_https():
    assert {"raft-large-things", "raft-small-things"} <= set(weights.PRESETS)
    for preset in weights.PRESETS.values():
        assert preset.url.startswith("https://download.pytorch.org/models/raft_")
        assert preset.filename.endswith(f"-{preset.sha256_prefix}.pth")


def test_safetensors_without_the_package(tmp_path, monkeypatch):
    path = tmp_path / "raft-small.safetensors"
    path.write_bytes(b"\0" * 16)  # never opened: the import fails first
    # None in sys.modules makes `import safetensors.torch` raise ModuleNotFoundError, as if not installed.
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(WeightsError, match=r"is a .safetensors file; install the 'safetensors' package to read it"):
        load_model(path)
    with pytest.raises(WeightsError, match="install the 'safetensors' package"):
        weights.read_checkpoint(path)


@pytest.mark.parametrize("contents", [[1, 2], torch.zeros(3)], ids=["list", "tensor"])
def test_checkpoint_that_is_not_a_mapping(tmp_path, contents):
    path = tmp_path / "weights.pth"
    torch.save(contents, path)  # loads fine with weights_only=True, but holds no names
    kind = type(contents).__name__
    with pytest.raises(
        WeightsError, match=rf"weights.pth: expected a state dict \(a mapping of names to tensors\), got {kind}"
    ):
        load_model(path)
