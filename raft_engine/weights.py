"""Loading RAFT checkpoints: the published layout, torchvision's, and named downloadable presets.

`load_model(source, variant=None)` takes a path (.pth/.pt, .safetensors), a state dict, or a preset
name (`PRESETS`). Checkpoints are read with `torch.load(weights_only=True)`: loading never runs code.
Every key must be accounted for: missing, unexpected and mis-shaped entries are one error listing all.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import socket
import sys
import tempfile
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from raft_engine.errors import DownloadError, InputError, MissingFileError, WeightsError
from raft_engine.model.config import VARIANTS, RAFTConfig
from raft_engine.model.raft import RAFT

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Presets: torchvision's published RAFT weight files (torchvision/models/optical_flow/raft.py).
# The "-xxxxxxxx" in each file name is the start of the file's SHA-256, which is what torch.hub
# verifies too. The *-V1 files are ports of the published RAFT checkpoints (raft-things.pth, ...).


@dataclass(frozen=True)
class WeightsPreset:
    name: str
    url: str
    sha256_prefix: str
    variant: str
    description: str

    @property
    def filename(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name


_TV = "https://download.pytorch.org/models/"
PRESETS: dict[str, WeightsPreset] = {
    p.name: p
    for p in (
        WeightsPreset(
            "raft-large-things",
            _TV + "raft_large_C_T_V1-22a6c225.pth",
            "22a6c225",
            "large",
            "published raft-things.pth (FlyingChairs + FlyingThings3D), ported by torchvision",
        ),
        WeightsPreset(
            "raft-large-sintel",
            _TV + "raft_large_C_T_SKHT_V1-0b8c9e55.pth",
            "0b8c9e55",
            "large",
            "published raft-sintel.pth (things, then Sintel/KITTI/HD1K/things fine-tuning)",
        ),
        WeightsPreset(
            "raft-large-kitti",
            _TV + "raft_large_C_T_SKHT_K_V1-4a6a5039.pth",
            "4a6a5039",
            "large",
            "published raft-kitti.pth (the sintel weights fine-tuned on KITTI)",
        ),
        WeightsPreset(
            "raft-small-things",
            _TV + "raft_small_C_T_V1-ad48884c.pth",
            "ad48884c",
            "small",
            "published raft-small.pth (FlyingChairs + FlyingThings3D)",
        ),
        WeightsPreset(
            "raft-large-things-tv",
            _TV + "raft_large_C_T_V2-1bb1363a.pth",
            "1bb1363a",
            "large",
            "torchvision's own training on FlyingChairs + FlyingThings3D",
        ),
        WeightsPreset(
            "raft-large-sintel-tv",
            _TV + "raft_large_C_T_SKHT_V2-ff5fadd5.pth",
            "ff5fadd5",
            "large",
            "torchvision's own training, Sintel fine-tuned",
        ),
        WeightsPreset(
            "raft-large-kitti-tv",
            _TV + "raft_large_C_T_SKHT_K_V2-b5c70766.pth",
            "b5c70766",
            "large",
            "torchvision's own training, KITTI fine-tuned",
        ),
        WeightsPreset(
            "raft-small-things-tv",
            _TV + "raft_small_C_T_V2-01064c6d.pth",
            "01064c6d",
            "small",
            "torchvision's own training on FlyingChairs + FlyingThings3D",
        ),
    )
}

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

# The project's own models, trained on generated scenes (raft_engine.scenes) by raft_engine.training.loop
# and stored as data/builtin-VARIANT.pth, with how they were trained in data/builtin-VARIANT.json.
# "builtin" is the RAFT-small, which every installation has.
BUILTIN = "builtin"
BUILTIN_NAMES = {BUILTIN: "small", "builtin-small": "small", "builtin-large": "large"}
BUILTIN_DIR = Path(__file__).parent / "data"


def builtin_path(variant: str = "small") -> Path:
    path = BUILTIN_DIR / f"builtin-{variant}.pth"
    if not path.is_file():
        if variant == "small":
            raise MissingFileError(f"the built-in weights are missing from this installation ({path})")
        shipped = sorted(p.stem for p in path.parent.glob("builtin-*.pth"))
        raise MissingFileError(
            f"this version of raft_engine ships no built-in RAFT-{variant} (no {path.name}); "
            f"built-in weights shipped: {', '.join(shipped) or 'none'}"
        )
    return path


def builtin_record(variant: str = "small") -> dict:
    """How the built-in weights were trained: data seeds, steps, time, device, held-out EPE."""
    import json

    return json.loads(builtin_path(variant).with_suffix(".json").read_text())


def cache_dir() -> Path:
    """`RAFT_ENGINE_CACHE`, default ~/.cache/raft_engine."""
    return Path(os.environ.get("RAFT_ENGINE_CACHE") or Path.home() / ".cache" / "raft_engine")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_url(url: str) -> None:
    parsed = urllib.parse.urlparse(url)
    # Plain HTTP only to this machine (a local mirror, the tests); anything else must be HTTPS.
    if parsed.scheme == "https" or (parsed.scheme == "http" and parsed.hostname in _LOOPBACK_HOSTS):
        return
    raise DownloadError(f"refusing to download weights over {parsed.scheme or 'no scheme'}: {url} (HTTPS required)")


def fetch_preset(name: str, timeout: float = 60.0, progress: bool | None = None) -> Path:
    """The cached file of preset `name`, downloaded (and its hash verified) on first use.

    timeout: seconds the server may stay silent before the download fails.
    progress: show a progress bar on stderr while downloading; None shows it when stderr is a terminal.
    """
    if name not in PRESETS:
        raise WeightsError(f"unknown weights preset {name!r}; known presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    path = cache_dir() / preset.filename
    if path.is_file():
        digest = _sha256(path)
        if not digest.startswith(preset.sha256_prefix):
            raise WeightsError(
                f"cached weights {path} have SHA-256 {digest[:16]}..., expected {preset.sha256_prefix}...: "
                "the file is corrupt or was replaced; delete it to download it again"
            )
        return path

    _check_url(preset.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from %s to %s", name, preset.url, path)
    _download(name, preset, path, timeout, _show_progress(progress))
    return path


def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    # Auto: a bar is for someone watching a terminal; in logs and CI output it is only noise.
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # stderr replaced by an object without isatty, or closed
        return False


@contextlib.contextmanager
def _default_socket_timeout(seconds: float):
    # torch.hub.download_url_to_file opens the URL without a timeout, so its socket takes the process-wide
    # default (none: a stalled server would hang the download forever). Set it for the download only and
    # put the caller's back; sockets other threads open meanwhile get it too, the price of not
    # re-implementing the download.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(name: str, preset: WeightsPreset, path: Path, timeout: float, progress: bool) -> None:
    """Download `preset` to `path` through torch.hub; only a file whose whole SHA-256 matches gets there."""
    # torch.hub writes to a ".partial" file beside its destination, deletes it on failure and moves it there
    # once complete, but before we can hash the whole file (its hash_prefix check raises a bare RuntimeError
    # after the fact anyway). So its destination is a staging name in the cache folder (same file system:
    # the final os.replace is atomic), and only the verified file is renamed to the cache name.
    fd, staging_name = tempfile.mkstemp(dir=path.parent, prefix=preset.filename + ".", suffix=".download")
    os.close(fd)
    staging = Path(staging_name)
    try:
        try:
            with _default_socket_timeout(timeout):
                torch.hub.download_url_to_file(preset.url, str(staging), hash_prefix=None, progress=progress)
        # URLError and HTTPError (no network, 404, ...), timeouts and a full disk are OSErrors; a connection
        # dropped in the middle of a chunked response is an http.client.IncompleteRead, which is not one.
        except (OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise DownloadError(
                f"could not download weights {name!r} from {preset.url} ({reason}); they are not in the cache "
                f"either ({path}). Connect once to download them, or copy the file there "
                "(the cache folder is set by RAFT_ENGINE_CACHE)"
            ) from error
        # http.client ends a response cut short of its Content-Length silently: the hash catches that too.
        digest = _sha256(staging)
        if not digest.startswith(preset.sha256_prefix):
            raise WeightsError(
                f"downloaded {preset.url} has SHA-256 {digest[:16]}..., expected {preset.sha256_prefix}...; not cached"
            )
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# Reading and recognising state dicts.


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no such checkpoint file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
            raise WeightsError(_unreadable_checkpoint(path, error)) from error
    elif suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise WeightsError(
                f"{path} is a .safetensors file; install the 'safetensors' package to read it"
            ) from error
        obj = load_file(str(path), device="cpu")
    else:
        raise WeightsError(f"unsupported checkpoint type {suffix!r} ({path}); expected .pth, .pt or .safetensors")
    return _as_state_dict(obj, str(path))


def _unreadable_checkpoint(path: Path, error: BaseException) -> str:
    """One line for a .pth/.pt file torch.load(weights_only=True) refuses. torch's own message advises
    weights_only=False, which runs the file's code: wrong for a damaged file and unsafe for any other."""
    message = str(error)
    # "Unsupported global: GLOBAL numpy...", "Trying to load unsupported GLOBAL posix.system whose ...".
    globals_named = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", message)
    if globals_named:
        return (
            f"{path} holds Python objects besides tensors ({globals_named.group(1)}), which a weights-only load "
            "refuses (loading never runs a file's code): save the model's state dict alone"
        )
    return f"{path} is not a PyTorch checkpoint: it is damaged, or another kind of file ({type(error).__name__})"


def _as_state_dict(obj: object, origin: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{origin}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    # Training checkpoints often wrap the weights; these two wrappers are common and unambiguous.
    for wrapper in ("state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = inner
            break
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{origin}: not a state dict; entries that are not named tensors: {_listing(bad)}")
    return dict(obj)


def _listing(names, limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


PUBLISHED, TORCHVISION = "published", "torchvision"


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """-> (layout, state dict without a DataParallel 'module.' prefix)."""
    keys = list(state_dict)
    prefixed = [k.startswith("module.") for k in keys]
    if keys and all(prefixed):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    elif any(prefixed):
        with_prefix = [k for k in keys if k.startswith("module.")]
        without = [k for k in keys if not k.startswith("module.")]
        raise WeightsError(
            "state dict mixes keys with and without the 'module.' prefix: "
            f"{_listing(with_prefix)} vs {_listing(without)}"
        )
    if "fnet.conv1.weight" in state_dict:
        return PUBLISHED, dict(state_dict)
    if "feature_encoder.convnormrelu.0.weight" in state_dict:
        return TORCHVISION, dict(state_dict)
    raise WeightsError(
        "unrecognised state dict: expected the published RAFT layout (keys like 'fnet.conv1.weight', "
        "optionally prefixed 'module.') or torchvision's (keys like 'feature_encoder.convnormrelu.0.weight'); "
        f"got keys {_listing(state_dict)}"
    )


def infer_variant(layout: str, state_dict: Mapping[str, torch.Tensor]) -> str:
    """large/small from the stem of the feature encoder: 64 or 32 output channels."""
    key = "fnet.conv1.weight" if layout == PUBLISHED else "feature_encoder.convnormrelu.0.weight"
    stem = state_dict[key].shape
    for variant in VARIANTS:
        if tuple(stem) == (RAFTConfig.from_variant(variant).encoder_widths[0], 3, 7, 7):
            return variant
    raise WeightsError(
        f"cannot tell the RAFT variant: {key} has shape {tuple(stem)}; expected (64, 3, 7, 7) "
        "for large or (32, 3, 7, 7) for small"
    )


_TORCHVISION_RULES = [
    (r"^feature_encoder\.", "fnet."),
    (r"^context_encoder\.", "cnet."),
    (r"^(fnet|cnet)\.convnormrelu\.0\.", r"\1.conv1."),
    (r"^(fnet|cnet)\.convnormrelu\.1\.", r"\1.norm1."),
    (r"^(fnet|cnet)\.conv\.", r"\1.conv2."),
    (r"\.convnormrelu(\d)\.0\.", r".conv\1."),
    (r"\.convnormrelu(\d)\.1\.", r".norm\1."),
    (r"^update_block\.motion_encoder\.convcorr(\d)\.0\.", r"update_block.encoder.convc\1."),
    (r"^update_block\.motion_encoder\.convflow(\d)\.0\.", r"update_block.encoder.convf\1."),
    (r"^update_block\.motion_encoder\.conv\.0\.", "update_block.encoder.conv."),
    (r"^mask_predictor\.convrelu\.0\.", "update_block.mask.0."),
    (r"^mask_predictor\.conv\.", "update_block.mask.2."),
]


def torchvision_key(key: str, variant: str) -> str:
    for pattern, replacement in _TORCHVISION_RULES:
        key = re.sub(pattern, replacement, key)
    gru = re.match(r"^update_block\.recurrent_block\.convgru(\d)\.conv([zrq])\.(.*)$", key)
    if gru:
        index, gate, rest = gru.groups()
        # RAFT-large's two separable GRUs are convz1/convz2; RAFT-small's single one is convz.
        suffix = index if variant == "large" else ("" if index == "1" else f"_gru{index}")
        key = f"update_block.gru.conv{gate}{suffix}.{rest}"
    return key


def _fold_published_aliases(state_dict: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """Drop the published blocks' second name for the shortcut normalisation.

    A strided published block registers one norm module twice: `normN` (norm3 in residual blocks,
    norm4 in bottleneck blocks) and `downsample.1`. Loading a state dict into the published model
    writes `downsample.1` last, so that copy is the one in effect; the same here. In the published
    checkpoints both copies are identical; a state dict where they differ gets a warning.
    """
    alias = "norm3" if RAFTConfig.from_variant(variant).encoder_block == "residual" else "norm4"
    pattern = re.compile(rf"^((?:fnet|cnet)\.layer\d\.\d)\.{alias}\.(\w+)$")
    folded = dict(state_dict)
    differing = []
    for key, value in state_dict.items():
        match = pattern.match(key)
        if not match:
            continue
        target = f"{match.group(1)}.downsample.1.{match.group(2)}"
        if target not in state_dict:
            continue  # reported as unexpected by the strict check
        del folded[key]
        if value.shape != state_dict[target].shape or not torch.equal(value, state_dict[target]):
            differing.append(key)
    if differing:
        warnings.warn(
            f"the checkpoint's duplicate shortcut-norm entries differ from their 'downsample.1' twins "
            f"({_listing(differing, 4)}); the 'downsample.1' values are used, as the published code does",
            stacklevel=3,
        )
    return folded


def to_native(
    state_dict: Mapping[str, torch.Tensor], variant: str | None = None
) -> tuple[str, dict[str, torch.Tensor]]:
    """Recognise and convert a state dict -> (variant, state dict in this package's layout)."""
    layout, state_dict = detect_layout(state_dict)
    detected = infer_variant(layout, state_dict)
    if variant is None:
        variant = detected
    elif variant not in VARIANTS:
        raise InputError(f"unknown RAFT variant {variant!r}; expected one of {VARIANTS}")
    elif variant != detected:
        raise WeightsError(
            f"variant={variant!r} was requested, but the checkpoint's shapes are those of RAFT-{detected}"
        )
    if layout == TORCHVISION:
        converted = {torchvision_key(k, variant): v for k, v in state_dict.items()}
        if len(converted) != len(state_dict):
            raise WeightsError("torchvision state dict has keys that collide after conversion")
        return variant, converted
    return variant, _fold_published_aliases(state_dict, variant)


def check_state_dict(model: RAFT, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise one WeightsError listing every missing, unexpected and mis-shaped entry."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"mismatched shapes: {'; '.join(mismatched[:12])}" + (" ..." if len(mismatched) > 12 else ""))
    if problems:
        raise WeightsError(f"state dict does not fit RAFT-{model.config.variant}: " + " | ".join(problems))


def load_model(source: str | os.PathLike | Mapping[str, torch.Tensor], variant: str | None = None) -> RAFT:
    """A RAFT model in eval mode (CPU, float32) with the weights of `source`.

    Checkpoints are read with `torch.load(weights_only=True)`: loading never runs code. Every key must be
    accounted for.

    Args:
        source: A checkpoint path (.pth/.pt; .safetensors with the `safetensors` package), a state dict
            in the published layout (with or without 'module.') or torchvision's, "builtin" (the
            RAFT-small shipped in the package, trained by this project on generated scenes; works
            offline; also "builtin-small", and "builtin-large" where a version ships one), or a
            preset name from `PRESETS` (downloaded into the cache on first use).
        variant: "large" or "small"; inferred from the shapes when None, checked against them otherwise.

    Returns:
        The `RAFT`.

    Raises:
        MissingFileError: No such file, and not a weights name either; or built-in weights this version
            does not ship.
        WeightsError: A file or state dict that is not a RAFT checkpoint, of another variant than `variant`,
            or whose missing, unexpected and mis-shaped entries are listed in one error.
        InputError: An unknown variant.
        DownloadError: A preset that could not be downloaded.
    """
    if isinstance(source, Mapping):
        state_dict = _as_state_dict(source, "state dict")
    else:
        path = Path(source)
        if not path.is_file() and isinstance(source, str) and source in BUILTIN_NAMES:
            path = builtin_path(BUILTIN_NAMES[source])
        elif not path.is_file() and isinstance(source, str) and source in PRESETS:
            path = fetch_preset(source)
        elif not path.is_file():
            raise MissingFileError(
                f"no checkpoint file {str(source)!r}, and it is not a weights name either "
                f"({', '.join(map(repr, BUILTIN_NAMES))}, or a preset: {', '.join(PRESETS)})"
            )
        state_dict = read_checkpoint(path)
    variant, state_dict = to_native(state_dict, variant)
    model = RAFT(RAFTConfig.from_variant(variant))
    check_state_dict(model, state_dict)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
