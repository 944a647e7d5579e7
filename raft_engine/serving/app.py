"""The flow server's deployment: a Ray Serve replica that builds one FlowEngine and answers /v1/flow (a
multipart form of two images), the KServe v2 protocol (`raft_engine.serving.kserve`) and /healthz.

Every request is checked before it waits for anything: the body against its size limit (from its
Content-Length where given), the images against the pixel limit from their headers, the sizes against
RAFT's minimum. Checked requests of the same padded size, iterations and direction are batched by
`@serve.batch` (one queue per such key, so that different sizes never share a batch), padded each by its
own padder, run as one batch on the engine (one batch at a time per replica, off the event loop) and
cropped back: each flow is the one `FlowEngine.estimate` gives for the pair alone."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.datastructures import UploadFile
from starlette.requests import Request as StarletteRequest

from raft_engine.errors import InputError
from raft_engine.serving import kserve
from raft_engine.serving.payloads import FORM_FIELDS, Refusal, check_sizes, decode, encode, parse_options

DEFAULT_MAX_PIXELS = 3840 * 2160  # 4K UHD
DEFAULT_MAX_BODY_BYTES = 256 << 20  # two 4K images as KServe FP32 tensors, with room to spare
DEFAULT_MAX_ITERS = 64

api = FastAPI(title="raft-engine flow server", docs_url=None, redoc_url=None, openapi_url=None)


@dataclass(frozen=True)
class ServerSettings:
    """What each replica runs: weights (a checkpoint, preset or "builtin"), options (EngineOptions as a
    dict), iters (the default per request; a request may ask for 1 to max_iters), model_name (KServe's),
    max_batch_size and batch_wait_ms (`@serve.batch`'s), max_pixels (per image), max_body_bytes (per
    request), threads (torch's CPU threads in a replica; None: torch's default)."""

    weights: str = "builtin"
    options: dict[str, Any] = field(default_factory=dict)
    iters: int = 12
    max_iters: int = DEFAULT_MAX_ITERS
    model_name: str = "raft"
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Item:
    """One request's pairs in a batch: padded images (n, 3, H', W') on the engine's device, and its padder."""

    image1: torch.Tensor
    image2: torch.Tensor
    padder: Any

    @property
    def pairs(self) -> int:
        return int(self.image1.shape[0])


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.ingress(api)
class FlowServer:
    """One replica of the flow server (see the module's docstring); `settings` a ServerSettings as a dict."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from raft_engine.runtime.engine import FlowEngine
        from raft_engine.runtime.options import EngineOptions
        from raft_engine.weights import load_model

        self.settings = ServerSettings(**settings)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        self.engine = FlowEngine(load_model(self.settings.weights), EngineOptions(**self.settings.options))
        self.batchers: dict[tuple, Callable[[_Item], Awaitable[tuple[Any, int]]]] = {}
        self.lock = asyncio.Lock()
        # The engine runs in one thread of its own: with asyncio's default pool each batch could land on
        # another thread, and each new thread takes a malloc arena of its own, which grows the resident set.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raft-engine")

    # -- health and KServe metadata ------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.settings.model_name, "device": str(self.engine.device)}

    @api.get("/v2/health/live")
    async def live(self) -> Response:
        return Response(status_code=200)

    @api.get("/v2/health/ready")
    async def ready(self) -> Response:
        return Response(status_code=200)  # a replica answers only once its engine is built

    @api.get("/v2")
    async def server_metadata(self) -> dict[str, Any]:
        from raft_engine import __version__

        return {"name": "raft-engine", "version": __version__, "extensions": ["binary_tensor_data"]}

    @api.get("/v2/models/{name}")
    async def model_metadata(self, name: str) -> Response:
        return self._model(name) or JSONResponse(kserve.model_metadata(name))

    @api.get("/v2/models/{name}/ready")
    async def model_ready(self, name: str) -> Response:
        return self._model(name) or Response(status_code=200)

    @api.get("/v2/models/{name}/config")
    async def model_config(self, name: str) -> Response:
        return self._model(name) or JSONResponse(kserve.model_config(name, self.settings.max_batch_size))

    def _model(self, name: str) -> Response | None:
        """A 404 for a model this server does not hold, else None."""
        if name != self.settings.model_name:
            return _error(404, f"no model {name!r} here; this server holds {self.settings.model_name!r}")
        return None

    # -- inference -----------------------------------------------------------------------------------------

    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> Response:
        started = time.perf_counter()
        refused = self._model(name)
        if refused is not None:
            return refused
        try:
            body = await self._body(request)
            parsed = kserve.parse_infer(
                body, request.headers.get(kserve.HEADER_LENGTH), self.settings.iters, self.settings.max_iters
            )
            batch = parsed.image1.shape[0]
            if batch > self.settings.max_batch_size:
                raise Refusal(400, f"a batch of {batch} pairs; this model takes up to {self.settings.max_batch_size}")
            item = self._item(torch.from_numpy(parsed.image1), torch.from_numpy(parsed.image2))
        except Refusal as error:
            return _error(error.status, str(error))
        except InputError as error:
            return _error(400, str(error))
        flows, size = await self._batcher(item, parsed.iters, False)(item)
        body, headers = kserve.infer_response(name, parsed, flows.flow.float().cpu().numpy())
        headers.update(self._headers(size, started))
        return Response(body, headers=headers)

    @api.post("/v1/flow")
    async def flow(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await self._body(request)
            fields = await self._form(request, body)
            iters, kind, backward = parse_options(fields, self.settings.iters, self.settings.max_iters)
            images = []
            for name in ("image1", "image2"):
                upload = fields.get(name)
                if not isinstance(upload, UploadFile):
                    raise Refusal(400, f"the form has no file {name}: send image1 and image2 as multipart/form-data")
                images.append(decode(await upload.read(), name, self.settings.max_pixels))
            check_sizes(*images)
            item = self._item(*(torch.from_numpy(image).permute(2, 0, 1)[None] for image in images))
        except Refusal as error:
            return _error(error.status, str(error))
        except InputError as error:
            return _error(400, str(error))
        result, size = await self._batcher(item, iters, backward)(item)
        payload, content_type, shape = encode(result, kind)
        headers = {"X-Flow-Shape": ",".join(map(str, shape)), "X-Iters": str(iters), **self._headers(size, started)}
        return Response(payload, media_type=content_type, headers=headers)

    def _headers(self, size: int, started: float) -> dict[str, str]:
        return {"X-Batch-Size": str(size), "X-Server-Time-Ms": f"{1000 * (time.perf_counter() - started):.1f}"}

    async def _body(self, request: Request) -> bytes:
        """The request's body, refused (413) as soon as it is known to pass the limit: from its
        Content-Length before reading, else while reading."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise Refusal(413, f"the body is {declared} bytes, more than the {limit} allowed")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refusal(413, f"the body passes the {limit} bytes allowed")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _form(self, request: Request, body: bytes) -> dict[str, Any]:
        """The multipart form of a body already read (and size-checked)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise Refusal(400, "send the images as multipart/form-data (fields image1 and image2)")

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await StarletteRequest(request.scope, replay).form(
                max_files=2, max_fields=len(FORM_FIELDS), max_part_size=1 << 20
            )
        except Exception as error:  # starlette's MultiPartException and the parser's own errors
            raise Refusal(400, f"the multipart form cannot be parsed ({error})") from None
        return dict(form.items())

    def _item(self, image1: torch.Tensor, image2: torch.Tensor) -> _Item:
        """Images (n, 3, H, W) in 0..255 -> the item, checked and padded by its own padder (400 if too small)."""
        from raft_engine.runtime.inputs import check_pair, to_image_batch

        batch1, batch2 = to_image_batch(image1, "image1"), to_image_batch(image2, "image2")
        check_pair(batch1, batch2)
        padder = self.engine.padder_for(*batch1.shape[-2:])
        device = self.engine.device
        return _Item(padder.pad(batch1.to(device)), padder.pad(batch2.to(device)), padder)

    # -- batching ------------------------------------------------------------------------------------------

    def _batcher(self, item: _Item, iters: int, both: bool) -> Callable[[_Item], Awaitable[tuple[Any, int]]]:
        """The batch queue of this padded size, iteration count and direction, made on first use."""
        key = (tuple(item.image1.shape[-2:]), iters, both)
        if key not in self.batchers:

            async def run(items: list[_Item]) -> list[tuple[Any, int]]:
                async with self.lock:  # one batch at a time on the engine, off the event loop
                    loop = asyncio.get_running_loop()
                    return await loop.run_in_executor(self.executor, self._compute, items, iters, both)

            self.batchers[key] = serve.batch(
                max_batch_size=self.settings.max_batch_size,
                batch_wait_timeout_s=self.settings.batch_wait_ms / 1000,
                batch_size_fn=lambda items: sum(item.pairs for item in items),
            )(run)
        return self.batchers[key]

    def _compute(self, items: list[_Item], iters: int, both: bool) -> list[tuple[Any, int]]:
        """One batch -> each item's result (cropped to its own size) and the batch's size in pairs."""
        from raft_engine.model.consistency import forward_backward_check
        from raft_engine.model.raft import BidirectionalResult, FlowResult

        image1 = torch.cat([item.image1 for item in items])
        image2 = torch.cat([item.image2 for item in items])
        size = int(image1.shape[0])
        result: Any = (self.engine.bidirectional if both else self.engine.estimate)(image1, image2, iters=iters)
        answers: list[tuple[Any, int]] = []
        start = 0
        for item in items:
            pick = slice(start, start + item.pairs)
            start += item.pairs
            if not both:
                answers.append((FlowResult(flow=item.padder.unpad(result.flow[pick]), flow_low=None), size))
                continue
            forward = item.padder.unpad(result.forward.flow[pick])
            backward = item.padder.unpad(result.backward.flow[pick])
            answers.append((
                BidirectionalResult(
                    forward=FlowResult(flow=forward, flow_low=None),
                    backward=FlowResult(flow=backward, flow_low=None),
                    occlusion=forward_backward_check(forward, backward),
                    occlusion_backward=forward_backward_check(backward, forward),
                ),
                size,
            ))  # fmt: skip
        return answers
