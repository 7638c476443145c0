"""The OpenAI-compatible HTTP app: routes, limits, errors, streaming."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from specdecode.engine import NumSpeculativeTokens, SpeculativeDecoder
from specdecode.logprobs import TokenLogprob
from specdecode.sampling import SEED_RANGE, NonFiniteLogitsError, SamplingParams
from specdecode.server.config import ServerConfig
from specdecode.server.metrics import Metrics
from specdecode.server.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    chat_logprobs,
    completion_logprobs,
    envelope,
    new_id,
    openapi_schema,
    speculative,
    usage,
)
from specdecode.server.worker import DeadlineError, Job, QueueFullError, QueueWaitError, Worker
from specdecode.stats import DecodeStats

log = logging.getLogger("specdecode.server")
DISCONNECT_POLL_S = 0.2  # how often a request checks that its client is still connected


@dataclass
class Choice:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stats: DecodeStats | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


def warm_up(decoder: SpeculativeDecoder, k: NumSpeculativeTokens) -> None:
    """Build the kernels and calibrate the auto policy's costs before the first request pays for them."""
    print("warming up (kernels, and the auto policy's cost calibration) ...", file=sys.stderr, flush=True)
    decoder.generate("Hello", max_new_tokens=4, num_speculative_tokens=k)
    decoder.reset()


def create_app(decoder: SpeculativeDecoder, config: ServerConfig) -> FastAPI:
    """The app for one decoder; its decoding thread starts now and stops at shutdown."""
    metrics = Metrics()
    if config.max_n > config.max_batch_rows:
        raise ValueError(f"max_n ({config.max_n}) must be at most max_batch_rows ({config.max_batch_rows})")
    try:
        decoder.grammars()  # now rather than at the first request with a response_format
    except ImportError as err:
        log.warning("%s: requests with a response_format will be refused", err)
    worker = Worker(
        decoder,
        config.max_pending,
        config.max_rows,
        config.max_batch_rows,
        on_tokens=metrics.generation_tokens.inc,
        on_step=metrics.record_step,
    )
    metrics.watch_queue(running=lambda: worker.running, waiting=lambda: worker.waiting)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.stop()

    app = FastAPI(title="specdecode", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.worker, app.state.metrics = worker, metrics

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), config.api_key.encode()):
            raise APIError(
                401, "invalid or missing API key (send 'Authorization: Bearer <key>')", "authentication_error"
            )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        _count(request, err.status)
        if err.status < 500:
            log.info("%s %s -> %d: %s", request.method, request.url.path[:100], err.status, err.message)
        return JSONResponse(err.body(), status_code=err.status)

    def _count(request: Request, status: int) -> None:
        """Count an answered request under its route's path (or "other": label values come from a fixed set)."""
        route = request.scope.get("route")
        metrics.requests.labels(endpoint=getattr(route, "path", "other"), status=str(status)).inc()

    @app.exception_handler(ValidationError)
    async def _invalid(request: Request, err: ValidationError) -> JSONResponse:
        return await _api_error(request, validation_message(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return await _api_error(request, APIError(err.status_code, str(err.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error")  # the trace goes to the log, never to the client
        return await _api_error(request, APIError(500, "internal server error", "server_error"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict:
        card = {"id": config.model_name, "object": "model", "created": started, "owned_by": "specdecode"}
        return {"object": "list", "data": [card]}

    @app.get("/openapi.json", dependencies=[Depends(authorize)], include_in_schema=False)
    async def openapi() -> dict:
        return openapi_schema(app.routes, config.model_name, config.max_tokens_limit, config.max_n)

    @app.get("/metrics", dependencies=[Depends(authorize)])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(request: Request):
        req = CompletionRequest.model_validate(await _read_json(request, config), strict=True)
        if req.suffix or (req.best_of or req.n) != req.n:
            raise APIError(400, "suffix and best_of are not supported")
        if req.echo and req.stream:
            raise APIError(400, "echo is not supported with stream", param="echo")
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        if max_tokens == 0 and not req.echo:
            raise APIError(400, "max_tokens 0 needs echo (it scores the prompt)", param="max_tokens")
        prompt = req.prompt[0] if isinstance(req.prompt, list) and isinstance(req.prompt[0], str) else req.prompt
        return await _serve(request, req, prompt, max_tokens, chat=False, logprobs=req.logprobs)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(request: Request):
        req = ChatRequest.model_validate(await _read_json(request, config), strict=True)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if req.max_tokens == 0:
            raise APIError(400, "max_tokens must be at least 1", param="max_tokens")
        if decoder.tokenizer.chat_template is None:
            raise APIError(400, "this model has no chat template: use /v1/completions", param="messages")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        max_tokens = req.max_completion_tokens or req.max_tokens or config.default_max_tokens
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        return await _serve(request, req, messages, max_tokens, chat=True, logprobs=logprobs)

    async def _serve(request: Request, req, prompt, max_tokens: int, chat: bool, logprobs: int | None):
        """Decode the request; `logprobs`: None, or the number of alternatives to report per token."""
        start = time.perf_counter()
        job = _make_job(req, prompt, max_tokens, logprobs)
        job.start_by = time.monotonic() + config.max_queue_wait
        job.finish_by = time.monotonic() + config.request_timeout
        try:
            worker.submit(job)
        except QueueFullError as err:
            raise APIError(429, str(err), "rate_limit_error") from None
        metrics.prompt_tokens.inc(len(job.prompt_ids))
        request_id = new_id("chatcmpl" if chat else "cmpl")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = _stream(request, job, request_id, chat, include_usage, start, logprobs is not None)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        collected = await _collect(request, job, start)
        if collected is None:  # the client went away
            _count(request, 499)
            return Response(status_code=499)
        choices, prompt_scores = collected
        body = envelope("chat.completion" if chat else "text_completion", request_id, config.model_name)
        tokenizer = decoder.tokenizer
        if chat:
            body["choices"] = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": None if logprobs is None else chat_logprobs(tokenizer, c.logprobs),
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ]
        else:
            echoed = (prompt if isinstance(prompt, str) else tokenizer.decode(job.prompt_ids)) if req.echo else ""
            prompt_part = (job.prompt_ids, [None, *prompt_scores]) if req.echo else ([], [])
            body["choices"] = [
                {
                    "index": i,
                    "text": echoed + c.text,
                    "logprobs": None
                    if logprobs is None
                    else completion_logprobs(tokenizer, prompt_part[0] + c.token_ids, prompt_part[1] + c.logprobs),
                    "finish_reason": c.finish_reason or "length",
                }
                for i, c in enumerate(choices)
            ]
        body["usage"] = usage(len(job.prompt_ids), sum(len(c.token_ids) for c in choices))
        body["speculative"] = speculative([c.stats for c in choices if c.stats])
        _finish(request, job, choices, start)
        return JSONResponse(body)

    def _make_job(req, prompt, max_tokens: int, logprobs: int | None) -> Job:
        """Validate the request against the model and the limits; 400 with the reason if it fails."""
        if req.model != config.model_name:
            message = f"the model {req.model!r} does not exist; this server has {config.model_name!r}"
            raise APIError(404, message, param="model", code="model_not_found")
        if req.n > config.max_n:
            raise APIError(400, f"n must be at most {config.max_n}", param="n")
        if max_tokens > config.max_tokens_limit:
            raise APIError(400, f"max_tokens must be at most {config.max_tokens_limit}", param="max_tokens")
        k = config.num_speculative_tokens if req.num_speculative_tokens is None else req.num_speculative_tokens
        if isinstance(k, int) and k > config.max_num_speculative_tokens:
            message = f"num_speculative_tokens must be at most {config.max_num_speculative_tokens}"
            raise APIError(400, message, param="num_speculative_tokens")
        try:
            prompt_ids = decoder.encode(prompt)
            if config.max_prompt_tokens is not None and len(prompt_ids) > config.max_prompt_tokens:
                raise ValueError(
                    f"the prompt has {len(prompt_ids)} tokens; this server takes at most {config.max_prompt_tokens}"
                )
            decoder.check_request(len(prompt_ids), max(max_tokens, 1), k)
            if req.seed is not None and req.seed + req.n > SEED_RANGE[1]:
                raise ValueError("seed + n - 1 must be below 2**64 (choice i is sampled with seed + i)")
            sampling = SamplingParams(
                temperature=req.temperature,
                top_k=req.top_k,
                top_p=req.top_p,
                min_p=req.min_p,
                seed=req.seed,
                stop=tuple(req.stop or ()),
                presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty,
                repetition_penalty=req.repetition_penalty,
                logit_bias={int(token): value for token, value in (req.logit_bias or {}).items()},
                logprobs=logprobs,
                grammar=req.response_format.spec() if req.response_format else None,
            )
            decoder.rules(sampling, prompt_ids, req.ignore_eos)  # a bad logit_bias id or grammar is the client's
        except (ValueError, TypeError, ImportError) as err:
            raise APIError(400, str(err)) from None
        scored = logprobs if getattr(req, "echo", False) and logprobs is not None else None
        loop = asyncio.get_running_loop()
        return Job(prompt_ids, max_tokens, k, sampling, req.n, loop, req.ignore_eos, prompt_logprobs=scored)

    async def _events(request: Request, job: Job) -> AsyncIterator[tuple]:
        """The job's events until "done" or "error"; they stop (and the job is cancelled) once the client
        has disconnected, checked every DISCONNECT_POLL_S seconds however fast the events come."""
        next_check = time.monotonic() + DISCONNECT_POLL_S
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                event = None
            if event is None or time.monotonic() >= next_check:
                next_check = time.monotonic() + DISCONNECT_POLL_S
                if await request.is_disconnected():
                    job.cancelled.set()
                    return
            if event is not None:
                yield event
                if event[0] in ("done", "error"):
                    return

    async def _collect(request: Request, job: Job, start: float) -> tuple[list[Choice], list[TokenLogprob]] | None:
        """The choices and the prompt's scores (where asked), or None if the client went away."""
        choices, prompt_scores = [Choice() for _ in range(job.rows)], []
        try:
            async for kind, index, payload in _events(request, job):
                if kind == "done":
                    return choices, prompt_scores
                if kind == "error":
                    raise _generation_error(payload)
                if kind == "prompt":
                    prompt_scores = payload
                    continue
                _add_chunk(choices[index], payload, start, first=not any(c.token_ids for c in choices))
            return None
        finally:
            job.cancelled.set()  # no-op when done; frees the slot if this handler is cancelled

    def _add_chunk(choice: Choice, chunk, start: float, first: bool) -> None:
        if first and chunk.token_ids:
            metrics.first_token.observe(time.perf_counter() - start)
        choice.text += chunk.text
        choice.token_ids += chunk.token_ids
        choice.logprobs += chunk.logprobs or []
        choice.finish_reason, choice.stats = chunk.finish_reason, chunk.stats
        if chunk.finish_reason is not None:
            metrics.record_generation(chunk.stats)

    async def _stream(
        request: Request, job: Job, request_id: str, chat: bool, include_usage: bool, start: float, logprobs: bool
    ) -> AsyncIterator[str]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())
        choices = [Choice() for _ in range(job.rows)]

        def sse(choice_list: list[dict], **extra) -> str:
            body = {**envelope(kind, request_id, config.model_name, created), "choices": choice_list, **extra}
            return f"data: {json.dumps(body)}\n\n"

        status = 499  # until the stream ends otherwise: the client went away
        try:
            async for what, index, payload in _events(request, job):
                if what == "done":
                    status = 200
                    continue
                if what == "error":  # the stream has started (200): it ends with an error event
                    err = _generation_error(payload)
                    status = err.status
                    log.info("%s: stream ended by an error (%d): %s", request.url.path, err.status, err.message)
                    yield f"data: {json.dumps(err.body())}\n\n"
                    return
                choice = choices[index]
                if chat and choice.stats is None:  # the first chunk of this choice says who speaks
                    opening = {"index": index, "delta": {"role": "assistant", "content": ""}}
                    yield sse([{**opening, "logprobs": None, "finish_reason": None}])
                offset = len(choice.text)
                _add_chunk(choice, payload, start, first=not any(c.token_ids for c in choices))
                if payload.text or payload.finish_reason or logprobs:
                    part = {"content": payload.text} if payload.text else {}
                    item = {"index": index, "delta": part} if chat else {"index": index, "text": payload.text}
                    scores = None
                    if logprobs:
                        tokenizer, entries = decoder.tokenizer, payload.logprobs
                        scores = (
                            chat_logprobs(tokenizer, entries)
                            if chat
                            else completion_logprobs(tokenizer, payload.token_ids, entries, offset)
                        )
                    yield sse([{**item, "logprobs": scores, "finish_reason": payload.finish_reason}])
            if status != 200:
                return
            if include_usage:
                completion = sum(len(c.token_ids) for c in choices)
                yield sse(
                    [],
                    usage=usage(len(job.prompt_ids), completion),
                    speculative=speculative([c.stats for c in choices if c.stats]),
                )
            yield "data: [DONE]\n\n"
            _finish(request, job, choices, start)
        finally:
            job.cancelled.set()
            if status != 200:
                _count(request, status)

    def _finish(request: Request, job: Job, choices: list[Choice], start: float) -> None:
        seconds = time.perf_counter() - start
        metrics.latency.observe(seconds)
        _count(request, 200)
        spec = speculative([c.stats for c in choices if c.stats])
        completion = sum(len(c.token_ids) for c in choices)
        log.info(
            "%s prompt=%d completion=%d n=%d finish=%s %.2fs %.1f tok/s acceptance=%.1f%% mean_acceptance_length=%.2f",
            request.url.path,
            len(job.prompt_ids),
            completion,
            len(choices),
            ",".join(str(c.finish_reason) for c in choices),
            seconds,
            completion / seconds if seconds else 0.0,
            100 * spec["acceptance_rate"],
            spec["mean_acceptance_length"],
        )

    return app


async def _read_json(request: Request, config: ServerConfig) -> dict:
    """The request body as a JSON object: 413 beyond `max_body_bytes`, 408 if it takes longer than
    `body_timeout`, 400 if it is not a JSON object of text (lone UTF-16 surrogates are not text)."""
    limit = config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is larger than {limit} bytes")

    async def read() -> bytes:
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise APIError(413, f"the request body is larger than {limit} bytes")
        return bytes(body)

    try:
        body = await asyncio.wait_for(read(), config.body_timeout)
    except asyncio.TimeoutError:
        raise APIError(408, f"the request body did not arrive within {config.body_timeout:g} s") from None
    try:
        data = json.loads(body)
        json.dumps(data, ensure_ascii=False).encode()  # raises on a lone surrogate
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}") from None
    except UnicodeEncodeError:
        message = "the request body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text"
        raise APIError(400, message) from None
    except ValueError:  # Python's limit on the digits of an integer
        raise APIError(400, "the request body holds a number with too many digits") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


def _generation_error(err: Exception) -> APIError:
    """What the client is told when its generation stops early."""
    if isinstance(err, QueueWaitError):
        return APIError(429, str(err), "rate_limit_error")
    if isinstance(err, DeadlineError):
        return APIError(408, str(err), "timeout_error")
    if isinstance(err, NonFiniteLogitsError):
        return APIError(500, str(err), "server_error")
    return APIError(500, "generation failed (see the server log)", "server_error")


def validation_message(err: ValidationError) -> APIError:
    """400 naming the first invalid field (without pydantic's names for the branches of a union)."""
    first = err.errors()[0]
    param = ".".join(str(p) for p in first["loc"] if not _is_union_branch(p)) or None
    message = first["msg"].removeprefix("Value error, ")
    return APIError(400, f"{param}: {message}" if param else message, param=param)


def _is_union_branch(part) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "none"))
