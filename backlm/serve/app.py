"""``backlm serve``: one model behind an OpenAI-compatible HTTP API and a chat page.

All model work runs on one thread (:class:`ModelThread`), one piece of text per turn in
arrival order, so concurrent streams interleave fairly, the CPU kernels keep one warm thread
team, and the event loop (``/health``, other requests) never waits for a generation. Request bodies are size-capped before they are read whole; every
refusal is OpenAI's error shape with a 4xx status.
"""

import threading
from collections.abc import AsyncIterator
from dataclasses import asdict
from importlib import resources
from typing import Any

from backlm.errors import UserError
from backlm.serve import wire
from backlm.serve.batch import Batch
from backlm.serve.model_thread import Generation, ModelThread
from backlm.serve.replies import merged
from backlm.serve.wire import ApiError, Limits


class Engine:
    """The loaded model shared by all requests."""

    def __init__(self, loaded: Any, limits: Limits) -> None:
        self.loaded, self.limits = loaded, limits
        self.models = wire.served_models(loaded.name, loaded.direction)
        self.lock = threading.Lock()  # held by the model thread while it computes
        # every generation's rows decoded together, on the model thread
        self.batch = Batch(loaded.model, limits.batch_rows)
        self.model = ModelThread(self.lock)
        self.slots = threading.BoundedSemaphore(limits.max_generations)
        self.stopping = threading.Event()  # set at shutdown: generations end at their next piece

    def info(self) -> dict[str, Any]:
        """What ``/model_info`` reports."""
        ld = self.loaded
        try:
            config = asdict(ld.exp.config()) if ld.exp else {"model": ld.meta.get("model_config")}
        except (UserError, OSError):  # a checkpoint folder without its experiment's config
            config = {"model": ld.meta.get("model_config")}
        orders = ld.direction.orders
        return {"id": ld.name, "phase": ld.phase, "direction": ld.direction,
                "can_toggle": len(orders) > 1, "step": ld.step, "orders": list(orders),
                # where each order's turns go: the page places text by these, never by names
                "positions": {o.value: o.writes_at for o in orders},
                "models": list(self.models), "config": config, "limits": asdict(self.limits)}

    def chat(self, req: wire.ChatRequest) -> tuple[Any, "Generation"]:
        """A conversation with the request's turns and the stream of the model's turn (close
        it to free its slot); the first piece is computed here, so a refused prompt raises
        before any byte is sent."""
        from backlm.serve.conversation import Chat

        ld = self.loaded
        try:
            session = Chat(self.batch, ld.tokenizer, ld.direction, ld.phase, req.order)
            text = session.load(req.messages)
        except UserError as exc:
            raise ApiError(400, str(exc), "messages") from None
        return session, self._generation(session.send(text, req.sampling, req.n, req.stop,
                                                      req.logprobs), "messages")

    def _generation(self, pieces: Any, param: str) -> Generation:
        if not self.slots.acquire(blocking=False):
            raise ApiError(429, "the server is busy: too many generations at once, retry soon",
                           kind="rate_limit_error", code="busy")
        generation = Generation(pieces, self.model, self.stopping, self.slots.release)
        try:
            generation.start()
        except UserError as exc:
            raise ApiError(400, str(exc), param) from None
        return generation

    def complete(self, req: Any) -> tuple[Any, Generation]:
        """A text completion run and the stream of its pieces (close it to free its slot)."""
        from backlm.serve.completions import Run

        run = Run(self.loaded, req, self.batch)
        return run, self._generation(run.pieces(), "prompt")

    def tokenize(self, text: str) -> list[int]:
        """``text``'s ids; a special token's spelling is that token (as vLLM's /tokenize)."""
        import re

        tok = self.loaded.tokenizer
        names = sorted(tok.specials, key=len, reverse=True)
        parts = re.split("(" + "|".join(map(re.escape, names)) + ")", text)
        return [t for i, part in enumerate(parts) if part
                for t in ([tok.specials[part]] if i % 2 else tok.encode(part))]

    def score(self, text: str) -> dict[str, Any]:
        from backlm.evaluation import score_text

        ld = self.loaded
        try:
            return self.model.call(score_text, ld.model, ld.tokenizer, ld.direction, text)
        except UserError as exc:
            raise ApiError(400, str(exc), "text") from None


def create_app(loaded: Any, limits: Limits | None = None) -> Any:
    """The FastAPI app serving ``loaded`` (a :class:`backlm.experiment.loading.LoadedModel`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    engine = Engine(loaded, limits or Limits())

    class ClosingStream(StreamingResponse):
        """A stream whose generation is closed however the response ends (a client that
        leaves mid-stream frees its slot at once)."""

        def __init__(self, events: AsyncIterator[bytes], generation: Generation) -> None:
            super().__init__(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})
            self.generation = generation

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.generation.close()

    app = FastAPI(title="backlm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.add_middleware(BodyLimit, limit=engine.limits.max_body_bytes)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), kind=kind).body(),
                            status_code=exc.status_code, headers=exc.headers)  # 405's Allow

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}",
                                     kind="server_error").body(), status_code=500)

    async def body_of(request: Request) -> dict[str, Any]:
        # the body is JSON whatever Content-Type says (curl -d sends a form type)
        return wire.parse_body(await request.body())

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("backlm.serve.web").joinpath("chat.html").read_text())

    @app.api_route("/health", methods=["GET", "HEAD"])  # monitors often probe with HEAD
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model_info")
    async def model_info() -> dict[str, Any]:
        return engine.info()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        ld = engine.loaded
        created = int(ld.exp.path.stat().st_mtime) if ld.exp and ld.exp.path.exists() else 0
        data = [{"id": name, "object": "model", "created": created, "owned_by": "backlm",
                 "direction": order or ld.direction} for name, order in engine.models.items()]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        listing = await models()
        for entry in listing["data"]:
            if entry["id"] == name:
                return entry
        raise ApiError(404, f"the model {name[:100]!r} does not exist here", "model",
                       "model_not_found")

    @app.post("/v1/score")
    async def score(request: Request) -> dict[str, Any]:
        text = wire.score_request(await body_of(request), engine.models, engine.limits)
        orders = await run_in_threadpool(engine.score, text)
        ld = engine.loaded
        return {"object": "score", "model": ld.name, "step": ld.step,
                "direction": ld.direction, "bytes": len(text.encode("utf-8")), "orders": orders}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = wire.chat_request(await body_of(request), engine.models,
                               engine.loaded.direction, engine.limits)
        session, pieces = await run_in_threadpool(engine.chat, req)
        cid = wire.new_id()
        if req.stream:
            return ClosingStream(_events(cid, req, session, pieces), pieces)
        try:
            await run_in_threadpool(list, pieces)
        finally:
            pieces.close()
        from backlm.serve.completions import chat_logprobs

        replies = session.replies
        choices = [{"index": i, "message": {"role": session.writes, "content": r.text},
                    "finish_reason": _finish(r, pieces),
                    "logprobs": None if req.logprobs is None else chat_logprobs(
                        engine.loaded.tokenizer, replies.reading_logprobs(i))}
                   for i, r in enumerate(replies.rows)]
        return wire.completion(cid, req.model, choices, _extra(session),
                               session.stats.prompt_tokens, session.stats.tokens)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        from backlm.serve import completions as text

        req = text.completion_request(await body_of(request), engine.models, engine.loaded,
                                      engine.limits)
        run, pieces = await run_in_threadpool(engine.complete, req)
        cid = text.new_id()
        if req.options.stream:
            return ClosingStream(text.events(cid, run, pieces), pieces)
        try:
            await run_in_threadpool(list, pieces)
        finally:
            pieces.close()
        return text.response(cid, run, pieces.cut)

    # the tokenizer routes of vLLM's server, which lm-evaluation-harness's remote tokenizer reads
    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        ld = engine.loaded
        return {"tokenizer_class": "backlm", "bos_token": "<|bos|>", "eos_token": "<|bos|>",
                "pad_token": None, "model_max_length": ld.model.cfg.seq_len,
                "chat_template": None, "direction": ld.direction}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        text = body.get("prompt")
        if not isinstance(text, str):
            raise ApiError(400, "prompt must be a string", "prompt")
        ids = engine.tokenize(wire._unicode(text, "prompt"))
        return {"tokens": ids, "count": len(ids),
                "max_model_len": engine.loaded.model.cfg.seq_len}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, str]:
        ids = (await body_of(request)).get("tokens")
        tok = engine.loaded.tokenizer
        if not (isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                              and 0 <= t < tok.vocab_size for t in ids)):
            raise ApiError(400, "tokens must be a list of token ids", "tokens")
        return {"prompt": tok.decode(ids)}

    return app


def _finish(reply: Any, generation: Generation) -> str:
    return "length" if generation.cut else reply.finish or "length"  # cut short by a shutdown


def _extra(session: Any) -> dict[str, Any]:
    s = session.stats
    return {"order": session.order.value, "position": session.position,
            "role": session.writes, "tokens_per_sec": round(s.tokens_per_sec, 1),
            "first_token_ms": round(1000 * s.first_token_seconds, 2),
            "conversation": session.messages if not session.plain else [
                {"role": "text", "content": session.text}]}


async def _events(cid: str, req: wire.ChatRequest, session: Any, pieces: Generation
                  ) -> AsyncIterator[bytes]:
    """SSE chunks per choice: the role, the text, the finish; the usage when asked; ``[DONE]``.

    By default every delta goes after the ones before it (``backlm.position`` ``end``), so a
    client that appends deltas reads the reply: forward pieces as they come, a backward
    reply (written toward its beginning, so no piece is final before the last) whole at its
    end. ``"backlm": {"stream_mode": "prepend"}`` streams backward pieces as they come, each to
    go before the text so far (``backlm.position`` ``start``), as the chat page shows them."""
    prepend = req.stream_mode == "prepend"
    hold = session.position == "start" and not prepend
    for i in range(req.n):
        yield wire.sse(wire.chunk(cid, req.model, {"role": session.writes, "content": ""}, None,
                                {"position": session.position if prepend else "end",
                                 "order": session.order.value}, i))
    fills: dict[tuple[int, str], Any] = {}

    def delta(piece: Any) -> bytes:
        key = (piece.row, piece.where)
        if key not in fills:
            fills[key] = wire.template(wire.chunk(cid, req.model, {"content": wire.HOLE}, None,
                                                  {"position": piece.where}, piece.row))
        return fills[key](piece.text)

    try:  # each wake-up sends what accumulated: one chunk per row, in one write
        while (batch := await pieces.take()) is not None:
            if not hold:
                yield b"".join(delta(piece) for piece in merged(batch))
    except Exception as exc:  # noqa: BLE001 - the stream has started: report in-band
        yield wire.sse(ApiError(500, f"generation failed: {type(exc).__name__}",
                               kind="server_error").body())
        yield wire.sse("[DONE]")
        return
    for i, reply in enumerate(session.replies.rows):
        if hold and reply.text:
            yield wire.sse(wire.chunk(cid, req.model, {"content": reply.text}, None,
                                    {"position": "end"}, i))
        yield wire.sse(wire.chunk(cid, req.model, {}, _finish(reply, pieces), _extra(session),
                                i))
    if req.include_usage:
        done = wire.chunk(cid, req.model, {}, None)
        done["choices"] = []
        done["usage"] = wire.usage(session.stats.prompt_tokens, session.stats.tokens)
        yield wire.sse(done)
    yield wire.sse("[DONE]")


class _TooLarge(ApiError):
    pass


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is refused (413) before it is read whole."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_large = _TooLarge(413, f"the request body is larger than {self.limit:,} bytes",
                              code="request_too_large")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _send_error(send, too_large)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large
            return message

        await self.app(scope, limited, send)


async def _send_error(send: Any, exc: ApiError) -> None:
    import json

    body = json.dumps(exc.body()).encode()
    await send({"type": "http.response.start", "status": exc.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve(loaded: Any, host: str, port: int, on_ready: Any = None,
          limits: Limits | None = None) -> None:
    """Run the server until interrupted; ``on_ready(url)`` once it listens (port 0 picks a
    free port). A port in use or a host that cannot be bound is a UserError."""
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # listening now, before the ready line: a client that connects as soon as it reads the
        # line waits in the backlog until uvicorn accepts, instead of being refused
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose "
                        "another --port or --host") from None
    bound = sock.getsockname()[1]
    app = create_app(loaded, limits)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Ctrl-C: generations end at their next piece, so requests finish within the
            # graceful wait instead of being cancelled (an error log) or holding the exit
            app.state.engine.stopping.set()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    shown = f"[{host}]" if ":" in host else host
    if on_ready is not None:
        on_ready(f"http://{shown}:{bound}")
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops gently on Ctrl-C, then raises it again
        pass
