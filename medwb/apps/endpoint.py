"""An OpenAI-compatible endpoint for the chosen variants (``medwb serve``).

A hospital information system calls a deployed model the way it calls OpenVINO Model Server,
llama.cpp's ``llama-server`` or vLLM: ``/v1/chat/completions`` and ``/v1/completions``
(streamed as server-sent events or not), ``/v1/models``, plus ``/health`` and Prometheus
``/metrics``. Built on FastAPI and uvicorn.

The models are the apps' shared pool (medwb.apps.pool: one process per model, the cores
shared out, crash restart, time limits); each HTTP request is its own pool client, so a
client that disconnects has its queued request dropped and its running one cancelled.
Answers are greedy (the workbench compares variants by their greedy output): ``temperature``
and ``top_p`` are accepted and not applied, which the response says in ``system_fingerprint``.

Access: 127.0.0.1 by default, every /v1 route needs the bearer token (``MEDWB_SERVE_TOKEN`` or
a token file; printed once when generated), nothing outbound, and prompts and answers are
never logged (the access log is off; only counts and timings are kept in the metrics).

Admission control: each model holds at most ``max_queue`` requests waiting beside the one it
generates; beyond that a request is answered 429 with ``Retry-After`` (the median time of
recent answers x the requests ahead), so a burst never makes accepted requests time out.
"""

import asyncio
import json
import statistics
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from medwb.apps.chat_prompt import CONTEXT_EXCEEDED
from medwb.errors import MedwbError

DEFAULTS = {"max_queue": 4, "max_tokens": 256}


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Metrics:
    """Prometheus metrics in a registry of their own (nothing global, nothing with text)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = CollectorRegistry()
        self.requests = Counter("medwb_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.tokens = Counter("medwb_tokens", "tokens by model and kind (prompt, completion)", ["model", "kind"],
                              registry=self.registry)
        self.queue = Gauge("medwb_queue_depth", "requests waiting or generating, per model", ["model"],
                           registry=self.registry)
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.ttft = Histogram("medwb_time_to_first_token_seconds", "first token, per model", ["model"],
                              buckets=buckets, registry=self.registry)
        self.latency = Histogram("medwb_request_seconds", "whole request, per model", ["model"], buckets=buckets,
                                 registry=self.registry)
        self.rejected = Counter("medwb_rejected", "requests refused by admission control (429)", ["model"],
                                registry=self.registry)


class Endpoint:
    """The pool, the admission control and the FastAPI app."""

    def __init__(self, pool, token: str, max_queue: int = DEFAULTS["max_queue"],
                 max_tokens: int = DEFAULTS["max_tokens"]):
        self.pool, self.token, self.max_queue, self.max_tokens = pool, token, max_queue, max_tokens
        self.metrics = Metrics()
        self.recent: dict[int, deque] = {}   # slot -> seconds of recent answers (Retry-After)
        self._admit = threading.Lock()
        self.pending: dict[int, int] = {}    # slot -> requests admitted and not finished
        self.app = self._build()

    # ------------------------------------------------------------------ models
    def models(self) -> dict[str, int]:
        return {s["label"]: s["slot"] for s in self.pool.states()}

    def _slot(self, name: str | None) -> tuple[int, str]:
        models = self.models()
        if not name and len(models) == 1:
            name = next(iter(models))
        if name not in models:
            raise _Refused(404, error_body(f"The model '{name}' does not exist; this server has "
                                           f"{', '.join(models)}", "invalid_request_error", "model_not_found",
                                           "model"))
        return models[name], name

    def _admit_or_refuse(self, slot: int, name: str) -> None:
        with self._admit:
            ahead = self.pending.get(slot, 0)
            if ahead > self.max_queue:  # one generating, max_queue waiting
                times = list(self.recent.get(slot) or [5.0])
                retry = max(1, round(statistics.median(times) * (ahead - self.max_queue)))
                self.metrics.rejected.labels(name).inc()
                raise _Refused(429, error_body(f"{name} is busy: {ahead} requests are ahead of this one (at most "
                                               f"{self.max_queue} wait); retry after {retry} s",
                                               "rate_limit_error", "model_busy"), {"Retry-After": str(retry)})
            self.pending[slot] = ahead + 1
            self.metrics.queue.labels(name).set(ahead + 1)

    def _release(self, slot: int, name: str, seconds: float | None) -> None:
        with self._admit:
            self.pending[slot] = max(0, self.pending.get(slot, 1) - 1)
            self.metrics.queue.labels(name).set(self.pending[slot])
            if seconds is not None:
                self.recent.setdefault(slot, deque(maxlen=20)).append(seconds)

    # ------------------------------------------------------------------ generating
    def _generate(self, slot: int, fields: dict, max_tokens: int) -> "_Job":
        """One pool job (its own pool client: closing it drops or stops the job)."""
        from medwb.apps.pool import PoolClient
        job = _Job(PoolClient(self.pool.socket_path))
        job.client.workers[slot].submit(1, fields, "", max_tokens, job.put, kind="chat")
        return job

    def _build(self):
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

        app = FastAPI(title="MedWB endpoint", docs_url=None, redoc_url=None, openapi_url=None)
        ep = self

        @app.exception_handler(_Refused)
        async def refused(request: Request, exc: "_Refused"):
            ep.metrics.requests.labels(request.url.path, str(exc.status)).inc()
            return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

        @app.exception_handler(RequestValidationError)
        async def invalid(request: Request, exc: RequestValidationError):
            ep.metrics.requests.labels(request.url.path, "400").inc()
            return JSONResponse(error_body(f"invalid request: {exc.errors()[0].get('msg')} at "
                                           f"{'.'.join(str(x) for x in exc.errors()[0].get('loc', []))}",
                                           "invalid_request_error"), status_code=400)

        def check_token(request: Request) -> None:
            if request.headers.get("authorization", "") != f"Bearer {ep.token}":
                raise _Refused(401, error_body("a bearer token is required: Authorization: Bearer <token> (see "
                                               "`medwb serve`)", "invalid_request_error", "invalid_api_key"))

        @app.get("/health")
        async def health():
            states = ep.pool.states()
            ready = all(s["state"] == "ready" for s in states)
            return JSONResponse({"status": "ok" if ready else "starting",
                                 "models": {s["label"]: s["state"] for s in states}},
                                status_code=200 if ready else 503)

        @app.get("/metrics")
        async def metrics(request: Request):
            check_token(request)
            from prometheus_client import generate_latest
            return PlainTextResponse(generate_latest(ep.metrics.registry).decode(),
                                     media_type="text/plain; version=0.0.4")

        @app.get("/v1/models")
        async def models(request: Request):
            check_token(request)
            return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "medwb"}
                                               for m in ep.models()]}

        async def complete(request: Request, chat: bool):
            check_token(request)
            try:
                body = await request.json()
            except ValueError:
                raise _Refused(400, error_body("the body is not JSON", "invalid_request_error")) from None
            if not isinstance(body, dict):
                raise _Refused(400, error_body("the body must be a JSON object", "invalid_request_error"))
            slot, name = ep._slot(body.get("model"))
            fields = _fields(body, chat)
            max_tokens = next((body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None),
                              ep.max_tokens)
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
                raise _Refused(400, error_body("max_tokens must be a positive integer", "invalid_request_error",
                                               None, "max_tokens"))
            if (body.get("n") or 1) != 1:
                raise _Refused(400, error_body("n must be 1 (greedy decoding gives one answer)",
                                               "invalid_request_error", None, "n"))
            ep._admit_or_refuse(slot, name)
            started = time.monotonic()
            job = ep._generate(slot, fields, max_tokens)
            first = await job.next()
            if first[0] == "done" and first[1].get("status") != "ok":
                job.close()
                ep._release(slot, name, None)
                error = first[1].get("error") or first[1].get("status")
                if CONTEXT_EXCEEDED in str(error):
                    raise _Refused(400, error_body(str(error).split(": ", 1)[-1], "invalid_request_error",
                                                   CONTEXT_EXCEEDED, "messages" if chat else "prompt"))
                raise _Refused(503, error_body(f"{name} could not answer: {error}", "server_error"))
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
            if body.get("stream"):
                return StreamingResponse(ep._stream(request, job, first, rid, name, chat, slot, started, max_tokens),
                                         media_type="text/event-stream")
            text, done = "", first if first[0] == "done" else None
            try:
                while done is None:
                    kind, msg = await job.next()
                    if kind == "text":
                        text += msg["text"]
                    elif kind == "done":
                        done = (kind, msg)
            finally:  # also when the client went away: the job is dropped and its place freed
                job.close()
                if done is None:
                    ep._release(slot, name, None)
            msg = done[1]
            ep._finish(slot, name, msg, started)
            ep.metrics.requests.labels(request.url.path, "200").inc()
            return _response(rid, name, msg.get("text") or text, msg, chat, max_tokens)

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            return await complete(request, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await complete(request, chat=False)

        return app

    def _finish(self, slot: int, name: str, msg: dict, started: float) -> None:
        seconds = time.monotonic() - started
        self._release(slot, name, seconds)
        self.metrics.latency.labels(name).observe(seconds)
        if msg.get("ttft_ms") is not None:  # the worker's own first-token time, plus the wait for a turn
            self.metrics.ttft.labels(name).observe(msg["ttft_ms"] / 1e3 + (msg.get("queue_s") or 0))
        self.metrics.tokens.labels(name, "prompt").inc(msg.get("prompt_tokens") or 0)
        self.metrics.tokens.labels(name, "completion").inc(msg.get("new_tokens") or 0)

    async def _stream(self, request, job, first, rid, name, chat, slot, started, max_tokens):
        """Server-sent events in the OpenAI chunk format; a client gone mid-stream cancels the
        job (closing its pool client drops and stops it) and frees its place."""
        created = int(time.time())
        item, finished = first, False

        def chunk(delta_text: str | None, finish: str | None) -> str:
            if chat:
                delta = {"content": delta_text} if delta_text is not None else {}
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": 0, "text": delta_text or "", "finish_reason": finish}
                obj = "text_completion"
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": name,
                                          "choices": [choice]}, ensure_ascii=False) + "\n\n"
        try:
            if chat:
                yield "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                             "model": name, "choices": [{"index": 0, "delta": {"role": "assistant"},
                                                                         "finish_reason": None}]}) + "\n\n"
            while True:
                kind, msg = item
                if kind == "text":
                    yield chunk(msg["text"], None)
                elif kind == "done":
                    finished = True
                    self._finish(slot, name, msg, started)
                    self.metrics.requests.labels(request.url.path, "200").inc()
                    yield chunk(None, _finish_reason(msg, max_tokens))
                    yield "data: [DONE]\n\n"
                    return
                if await request.is_disconnected():
                    return
                item = await job.next()
        finally:
            job.close()
            if not finished:
                self._release(slot, name, None)
                self.metrics.requests.labels(request.url.path, "499").inc()  # the client went away


class _Job:
    """A pool job's events ("start" | "text" | "done", msg), awaited one at a time. Closing it
    closes its pool client (the pool drops or stops the job) and wakes a waiting reader, so no
    thread is left blocked on a job nobody will finish."""

    def __init__(self, client):
        import queue
        self.client, self.events = client, queue.Queue()

    def put(self, kind: str, msg: dict) -> None:
        self.events.put((kind, msg))

    async def next(self) -> tuple[str, dict]:
        return await asyncio.get_running_loop().run_in_executor(None, self.events.get)

    def close(self) -> None:
        self.client.close()
        self.events.put(("done", {"status": "cancelled", "error": "closed"}))


class _Refused(Exception):
    def __init__(self, status: int, body: dict, headers: dict | None = None):
        super().__init__(body["error"]["message"])
        self.status, self.body, self.headers = status, body, headers or {}


def _fields(body: dict, chat: bool) -> dict:
    if chat:
        messages = body.get("messages")
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)
        if not ok:
            raise _Refused(400, error_body("messages must be a non-empty list of {role, content} with text content",
                                           "invalid_request_error", None, "messages"))
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise _Refused(400, error_body("prompt must be a non-empty string", "invalid_request_error", None, "prompt"))
    return {"prompt": prompt}


def _finish_reason(msg: dict, max_tokens: int) -> str:
    """"length" when the answer used its whole budget, else "stop" (it ended by itself)."""
    return "length" if (msg.get("new_tokens") or 0) >= max_tokens else "stop"


def _response(rid: str, name: str, text: str, msg: dict, chat: bool, max_tokens: int) -> dict:
    new = msg.get("new_tokens") or 0
    finish = _finish_reason(msg, max_tokens)
    usage = {"prompt_tokens": msg.get("prompt_tokens") or 0, "completion_tokens": new,
             "total_tokens": (msg.get("prompt_tokens") or 0) + new}
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": name, "choices": [choice],
            "usage": usage, "system_fingerprint": "medwb-greedy"}


def run(config_path, run_dir, ip: str, port: int, token_file: str | None, max_queue: int, max_tokens: int,
        log=print) -> int:
    """``medwb serve``: checked first (nothing written before), then the pool, then the endpoint
    until Ctrl+C. The pool's config file and token rules are the web apps' (medwb.apps.serve)."""
    import uvicorn

    from medwb import runner
    from medwb.apps import serve as app_serve
    from medwb.apps.pool import ModelPool
    from medwb.errors import check_count
    from medwb.paths import check_writable_dir
    check_count("--port", port, 1, "a TCP port, e.g. 8000")
    check_count("--max-queue", max_queue, 0, "requests that may wait per model")
    check_count("--max-tokens", max_tokens, 1, "the default max_tokens of a request")
    config = app_serve.load_config(config_path)
    token, source = app_serve.resolve_token(ip, token_file)
    if not app_serve.port_free("0.0.0.0" if ip == "localhost" else ip, port):
        raise MedwbError(f"--port {port}: already in use on {ip}; choose another port")
    if run_dir:
        check_writable_dir(run_dir, "--run-dir")
    app_serve.check_pool_fits(config["specs"], log=log)
    run_dir = Path(run_dir) if run_dir else runner.new_run_dir()
    pool = ModelPool.from_config(config, run_dir)
    pool.start()
    try:
        states = pool.wait_ready()
        log("models: " + "; ".join(f"{s['model']}: {s['state']}" + (f" ({s['error']})" if s["error"] else "")
                                    for s in states))
        endpoint = Endpoint(pool, token, max_queue, max_tokens)
        shown = token if source == "generated" else f"<the token from {source}>"
        log(f"OpenAI-compatible endpoint: http://{app_serve.connect_host(ip)}:{port}/v1  (Authorization: Bearer "
            f"{shown}; {'this machine only' if app_serve.is_loopback(ip) else 'keep it inside the intranet'})")
        log("stop with Ctrl+C")
        uvicorn.run(endpoint.app, host=ip, port=port, access_log=False, log_level="warning",
                    timeout_graceful_shutdown=10)
    finally:
        pool.close()
    return 0


