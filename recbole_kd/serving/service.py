"""``python -m recbole_kd serve DIR``: an exported model behind HTTP (starlette + uvicorn, the ``serve`` extra).

    POST /recommend   {"history": [tokens], "k": 10, "exclude_seen": false}   (sequential models)
                      {"user": token, "k": 10, "exclude_seen": false}         (MF models)
                   -> {"items": [tokens], "scores": [floats]}
    GET  /health   -> {"status": "ok", "model": ..., "n_items": ..., "card": {...}}

Errors are JSON ``{"error": "..."}``: 400 malformed JSON, 413 body or history over the limit, 422 a request the
model cannot answer (unknown tokens, named; empty history; k out of range; a user for a sequential model ...).
Memory is bounded by the body limit, ``max_k``, ``max_history`` and uvicorn's ``limit_concurrency`` (503 past it).
"""
from __future__ import annotations

import json
import signal
import sys

import torch

from recbole_kd.serving.artefact import Artefact, RequestError
from recbole_kd.errors import ServeError  # noqa: F401  (also importable from here)


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(artefact: Artefact, max_k: int = 1000, max_history: int = 1000, max_body: int = 1 << 20):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def read_body(request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            raise HTTPError(413, f"request body of {length} bytes is over the limit of {max_body} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                raise HTTPError(413, f"request body is over the limit of {max_body} bytes")
        return bytes(body)

    async def recommend(request):
        try:
            body = await read_body(request)
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise HTTPError(400, f"request body is not valid JSON ({exc})") from None
            if not isinstance(payload, dict):
                raise HTTPError(400, "request body must be a JSON object, e.g. {\"history\": [\"item1\"], \"k\": 10}")
            parsed, k, exclude = artefact.parse(payload, max_k=max_k, max_history=max_history)
        except HTTPError as exc:
            return error(exc.status, str(exc))
        except RequestError as exc:
            return error(exc.status, str(exc))
        items, scores = (await run_in_threadpool(artefact.top_k, [parsed], [k], [exclude]))[0]
        return JSONResponse({"items": items, "scores": scores})

    async def health(request):
        return JSONResponse({"status": "ok", **artefact.summary(), "limits": {
            "max_k": max_k, "max_history": max_history, "max_body_bytes": max_body}})

    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    return Starlette(routes=[Route("/recommend", recommend, methods=["POST"]), Route("/health", health)],
                     exception_handlers={HTTPException: http_error})


def serve(folder: str, host: str = "127.0.0.1", port: int = 8000, threads: int = 1, max_k: int = 1000,
          max_history: int = 1000, max_body: int = 1 << 20, limit_concurrency: int = 64,
          log_level: str = "info") -> int:
    """Run the service until SIGTERM or SIGINT, then shut down gracefully (in-flight requests finish); returns 0."""
    import uvicorn

    torch.set_num_threads(threads)
    artefact = Artefact.load(folder)
    app = create_app(artefact, max_k=max_k, max_history=max_history, max_body=max_body)
    config = uvicorn.Config(app, host=host, port=port, limit_concurrency=limit_concurrency, access_log=False,
                            log_level=log_level, timeout_graceful_shutdown=10, lifespan="off")
    server = uvicorn.Server(config)
    # uvicorn shuts down on SIGTERM / SIGINT, then re-raises the signal to the handler that was there before it
    # started: with Python's defaults the process would die of SIGTERM (or KeyboardInterrupt) after a clean
    # shutdown. These handlers take the re-raised signal, so a stopped service exits with status 0.
    stopped = []
    previous = {sig: signal.signal(sig, lambda s, f: stopped.append(s)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"recbole-kd serve: {artefact.model_name} ({artefact.kind}, {artefact.n_items - 1} items) from "
              f"{folder} on http://{host}:{port}", file=sys.stderr, flush=True)
        try:
            server.run()
        except SystemExit:  # uvicorn exits when it cannot listen (the port is taken ...), after logging why
            if server.started:
                raise
            raise ServeError(f"cannot listen on {host}:{port} (see uvicorn's message above: is the port in use?)"
                             ) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
