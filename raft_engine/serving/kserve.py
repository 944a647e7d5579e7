"""The KServe v2 inference protocol (the Open Inference Protocol over HTTP, as NVIDIA Triton Inference
Server speaks it), for the one model the flow server holds: its metadata and configuration, and inference
requests and responses in JSON or with the binary tensor extension.

The model has the inputs and outputs of the exported ONNX graph: `image1` and `image2`, (B, 3, H, W) FP32
in 0..255 (the client pads them to multiples of 8), and `flow`, (B, 2, H, W) FP32 in pixels at the same
size; B up to the server's max batch size. A request may set `parameters: {"iters": N}`. Binary tensors:
the JSON header first, its length in the Inference-Header-Content-Length header, then each binary tensor's
bytes (little-endian, row-major) in the order the JSON names them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from raft_engine.serving.payloads import Refusal, parse_iters

INPUTS = ("image1", "image2")
OUTPUTS = ("flow",)
HEADER_LENGTH = "Inference-Header-Content-Length"
PLATFORM = "raft_engine"


def model_metadata(name: str) -> dict[str, Any]:
    """GET /v2/models/NAME: the tensors, with -1 for the dimensions that vary."""
    image = {"datatype": "FP32", "shape": [-1, 3, -1, -1]}
    return {
        "name": name,
        "versions": ["1"],
        "platform": PLATFORM,
        "inputs": [{"name": input_name, **image} for input_name in INPUTS],
        "outputs": [{"name": "flow", "datatype": "FP32", "shape": [-1, 2, -1, -1]}],
    }


def model_config(name: str, max_batch_size: int) -> dict[str, Any]:
    """GET /v2/models/NAME/config, in Triton's JSON form of a model configuration (dims without the batch)."""
    return {
        "name": name,
        "platform": PLATFORM,
        "max_batch_size": max_batch_size,
        "input": [{"name": input_name, "data_type": "TYPE_FP32", "dims": [3, -1, -1]} for input_name in INPUTS],
        "output": [{"name": "flow", "data_type": "TYPE_FP32", "dims": [2, -1, -1]}],
    }


@dataclass(frozen=True)
class InferRequest:
    """An inference request, checked: the images (B, 3, H, W) float32, the iterations, the request's id,
    and whether the flow goes back as binary data."""

    image1: np.ndarray
    image2: np.ndarray
    iters: int
    id: str | None
    binary: bool


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Refusal(400, f"the request's JSON cannot be parsed ({error})") from None
    if not isinstance(value, dict):
        raise Refusal(400, "the request's JSON must be an object with inputs")
    return value


def _tensor(entry: Any, body: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor -> (its array, the offset of the next binary tensor)."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise Refusal(400, "each input must be an object with a name, shape, datatype and data")
    name = entry["name"]
    shape, datatype = entry.get("shape"), entry.get("datatype")
    if datatype != "FP32":
        raise Refusal(400, f"input {name} must be FP32 (images in 0..255), got {datatype}")
    if not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise Refusal(400, f"input {name} must have a shape (B, 3, H, W) of positive integers, got {shape}")
    count = int(np.prod(shape))
    parameters = entry.get("parameters") or {}
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != 4 * count:
            raise Refusal(400, f"input {name} of shape {shape} needs {4 * count} bytes, binary_data_size says {size}")
        if offset + size > len(body):
            raise Refusal(400, f"input {name} needs {size} bytes of binary data; the body ends first")
        return np.frombuffer(body, "<f4", count, offset).reshape(shape).astype(np.float32), offset + size
    if "data" not in entry:
        raise Refusal(400, f"input {name} has neither data nor binary_data_size")
    try:
        array = np.asarray(entry["data"], dtype=np.float32)
    except (TypeError, ValueError):
        raise Refusal(400, f"input {name}'s data are not numbers") from None
    if array.size != count:
        raise Refusal(400, f"input {name} of shape {shape} needs {count} values, got {array.size}")
    return array.reshape(shape), offset


def parse_infer(body: bytes, header_length: str | None, default_iters: int, max_iters: int) -> InferRequest:
    """POST /v2/models/NAME/infer's body (and its Inference-Header-Content-Length) -> the checked request."""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise Refusal(400, f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < length <= len(body):
            raise Refusal(400, f"{HEADER_LENGTH} is {length}, the body {len(body)} bytes")
    else:
        length = len(body)
    request = _json(body[:length])
    inputs = request.get("inputs")
    if not isinstance(inputs, list):
        raise Refusal(400, "the request has no list of inputs")
    names = [entry.get("name") if isinstance(entry, dict) else None for entry in inputs]
    if sorted(map(str, names)) != sorted(INPUTS):
        raise Refusal(400, f"the inputs must be {' and '.join(INPUTS)}, got {names}")
    offset, arrays = length, {}
    for entry in inputs:
        arrays[entry["name"]], offset = _tensor(entry, body, offset)
    if offset != len(body):
        raise Refusal(400, f"the body holds {len(body) - offset} bytes past its tensors")
    image1, image2 = arrays["image1"], arrays["image2"]
    if image1.shape != image2.shape:
        raise Refusal(400, f"image1 has shape {list(image1.shape)}, image2 {list(image2.shape)}: they must match")
    if image1.shape[1] != 3:
        raise Refusal(400, f"the images must have 3 channels (B, 3, H, W), got shape {list(image1.shape)}")
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise Refusal(400, "the request's parameters must be an object")
    iters = parse_iters(parameters.get("iters"), default_iters, max_iters)
    binary = bool(parameters.get("binary_data_output", False))
    for output in request.get("outputs") or []:
        if not isinstance(output, dict) or output.get("name") not in OUTPUTS:
            raise Refusal(400, f"unknown output {output!r}; the model's output is flow")
        binary = bool((output.get("parameters") or {}).get("binary_data", binary))
    request_id = request.get("id")
    return InferRequest(image1, image2, iters, None if request_id is None else str(request_id), binary)


def infer_response(model: str, request: InferRequest, flow: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The response to `request`: (body, headers), the flow as binary data where asked, else in the JSON."""
    output: dict[str, Any] = {"name": "flow", "datatype": "FP32", "shape": list(flow.shape)}
    data = np.ascontiguousarray(flow, dtype="<f4")
    if request.binary:
        output["parameters"] = {"binary_data_size": data.nbytes}
    else:
        output["data"] = data.ravel().tolist()
    response: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": [output]}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response).encode()
    if not request.binary:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + data.tobytes(), headers
