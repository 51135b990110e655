"""``python -m recbole_kd serve DIR``: an exported model behind HTTP (starlette + uvicorn, the ``serve`` extra).

    POST /recommend   {"history": [tokens], "k": 10, "exclude_seen": false}   (sequential models)
                      {"user": token, "k": 10, "exclude_seen": false}         (MF models)
                   -> {"items": [tokens], "scores": [floats]}
    GET  /health   -> {"status": "ok", "model": ..., "n_items": ..., "card": {...}}

Errors are JSON ``{"error": "..."}``: 400 malformed JSON, 413 body or history over the limit, 422 a request the
model cannot answer (unknown tokens, named; empty history; k out of range; a user for a sequential model ...).
Memory is bounded by the body limit, ``max_k``, ``max_history`` and uvicorn's ``limit_concurrency`` (503 past it).
Requests that arrive while the model is busy are scored together in one forward pass (``Batcher``).
"""
from __future__ import annotations

import asyncio
import collections
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


class Batcher:
    """Scores concurrent requests together: a request that arrives while the model is busy waits for the pass
    in progress, then goes into the next forward pass with every other request that waited (at most
    ``max_batch``). No request waits for a timer or for a batch to fill: one request at a time is one pass
    each, as without a batcher; under load, one pass answers many. ``run`` (an async callable running a sync
    function off the event loop, e.g. starlette's ``run_in_threadpool``) runs ``artefact.top_k``."""

    def __init__(self, artefact, max_batch: int, run):
        self.artefact, self.max_batch, self.run = artefact, max_batch, run
        self.pending: collections.deque = collections.deque()
        self.worker: asyncio.Task | None = None
        self.batch_sizes: collections.Counter = collections.Counter()  # passes by batch size (GET /health)

    async def top_k(self, parsed, k: int, exclude: bool):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((parsed, k, exclude, future))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self):
        while self.pending:
            batch = [self.pending.popleft() for _ in range(min(self.max_batch, len(self.pending)))]
            batch = [b for b in batch if not b[3].done()]  # a client that went away cancelled its future
            if not batch:
                continue
            self.batch_sizes[len(batch)] += 1
            try:
                results = await self.run(self.artefact.top_k, [b[0] for b in batch], [b[1] for b in batch],
                                         [b[2] for b in batch])
            except Exception as exc:  # every request of the pass gets the error (a 500 from the app)
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (*_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)


def create_app(artefact: Artefact, max_k: int = 1000, max_history: int = 1000, max_body: int = 1 << 20,
               max_batch: int = 32):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    batcher = Batcher(artefact, max_batch, run_in_threadpool)
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
        items, scores = await batcher.top_k(parsed, k, exclude)
        return JSONResponse({"items": items, "scores": scores})

    async def health(request):
        return JSONResponse({"status": "ok", **artefact.summary(), "limits": {
            "max_k": max_k, "max_history": max_history, "max_body_bytes": max_body, "max_batch": max_batch},
            "passes_by_batch_size": {str(n): c for n, c in sorted(batcher.batch_sizes.items())}})

    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    return Starlette(routes=[Route("/recommend", recommend, methods=["POST"]), Route("/health", health)],
                     exception_handlers={HTTPException: http_error})


def serve(folder: str, host: str = "127.0.0.1", port: int = 8000, threads: int = 1, max_k: int = 1000,
          max_history: int = 1000, max_body: int = 1 << 20, limit_concurrency: int = 64,
          log_level: str = "info", max_batch: int = 32) -> int:
    """Run the service until SIGTERM or SIGINT, then shut down gracefully (in-flight requests finish); returns 0."""
    import uvicorn

    torch.set_num_threads(threads)
    artefact = Artefact.load(folder)
    app = create_app(artefact, max_k=max_k, max_history=max_history, max_body=max_body, max_batch=max_batch)
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
