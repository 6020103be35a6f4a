"""`create_app`: the FastAPI application in front of one pipeline.

Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/models/{id}` (these need the API key
when one is set), `GET /health` (200 healthy, 503 not) and `GET /metrics` (Prometheus text). The
pipeline is any object with `submit(video, prompt, **kwargs) -> RequestHandle` and
`status(timeout_s) -> StatusOutput`; tests pass a stub with a `ServedModel` (the seam). The app does
not start or close the pipeline: its owner does (`spava.server.run`).
"""

from __future__ import annotations

import asyncio
import hmac
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from spava.server.bridge import DrainPool
from spava.server.chat import create_chat_completion
from spava.server.errors import APIError, install_handlers
from spava.server.media import MediaResolver
from spava.server.metrics import ServerMetrics
from spava.server.options import ServedModel, ServerOptions, describe_pipeline
from spava.server.protocol import ChatCompletionRequest, model_card


@dataclass
class ServerState:
    """Everything a request handler needs; one per app (in `app.state.spava`)."""

    pipeline: object
    served: ServedModel
    options: ServerOptions
    media: MediaResolver
    metrics: ServerMetrics
    drain_pool: DrainPool

    async def status(self):
        """The pipeline's StatusOutput, or None if it did not answer in `options.status_timeout_s`."""
        try:
            return await asyncio.to_thread(self.pipeline.status, self.options.status_timeout_s)
        except Exception:  # a timeout, a closed pipeline, a failed status request: all mean "not healthy"
            return None


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` (413) before they are read into memory."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        message = f"the request body is larger than the server's limit of {self.max_bytes} bytes (--max-media-bytes)"
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = APIError(413, message, code="request_too_large")
            return await JSONResponse(error.body(), status_code=413)(scope, receive, send)
        num_received = 0

        async def limited_receive():
            nonlocal num_received
            event = await receive()
            num_received += len(event.get("body", b""))
            if num_received > self.max_bytes:
                raise HTTPException(413, message)  # FastAPI passes HTTPException through body parsing
            return event

        await self.app(scope, limited_receive, send)


def _check_api_key(state: ServerState, authorization: str | None) -> None:
    expected = state.options.api_key
    if expected is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                       type="authentication_error", code="invalid_api_key")


def create_app(pipeline, options: ServerOptions | None = None, *, served: ServedModel | None = None,
               media_transport=None):
    """The app serving `pipeline`. `served` describes the model (default: from `pipeline.config`);
    `media_transport` is an httpx transport for fetching media URLs (tests)."""
    options = options or ServerOptions()
    state = ServerState(pipeline, served or describe_pipeline(pipeline, options), options,
                        MediaResolver(options, transport=media_transport), ServerMetrics(), DrainPool())

    @asynccontextmanager
    async def lifespan(app):
        yield
        await state.media.aclose()
        state.drain_pool.close()

    app = FastAPI(title="spava", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.spava = state
    install_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)

    async def authorized(authorization: str | None = Header(None)) -> None:  # async: no thread hop per request
        _check_api_key(state, authorization)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])

    @v1.post("/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest):
        return await create_chat_completion(state, request, body)

    @v1.get("/models")
    async def list_models():
        return {"object": "list", "data": [model_card(state.served)]}

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id != state.served.model_id:
            raise APIError(404, f"the model {model_id!r} does not exist; this server serves "
                                f"{state.served.model_id!r}", param="model", code="model_not_found")
        return model_card(state.served)

    @app.get("/health")
    async def health():
        status = await state.status()
        if status is None or not status.is_healthy:
            detail = "the pipeline did not answer" if status is None else (status.detail or "the pipeline is unhealthy")
            error = APIError(503, detail, type="service_unavailable_error", code="unhealthy")
            return JSONResponse(error.body(), status_code=503)
        return {"status": "ok", "num_inflight": status.num_inflight, "num_queued": status.num_queued}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(await state.status()), media_type=CONTENT_TYPE_LATEST)

    app.include_router(v1)
    return app
