"""OpenAI's transcription API over HTTP: the door of a RunPod load-balancing endpoint.

Started by ``python src/handler.py`` when ``ENDPOINT_TYPE=load_balancer``. RunPod's contract:
the app listens on ``PORT`` (default 80); ``GET /ping`` on ``PORT_HEALTH`` (default: ``PORT``)
answers 204 while the models load, 200 once the worker serves, and 503 after a GPU fault (so
RunPod replaces the worker). OpenAI's routes:

- ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``: multipart, as OpenAI's
  clients send it: ``file`` (or ``url``, an audio link fetched by the same guarded downloader
  as the queue API's ``audio_file``), ``model``, ``language``, ``prompt``, ``temperature``,
  ``response_format`` (default ``json``), ``timestamp_granularities[]``. The worker's own
  options (``diarization``, ``min_speakers``, ``align_output``, ...) arrive as further form
  fields (the official client's ``extra_body``), typed by the request schema. Without them,
  speakers are labelled only for ``diarized_json`` and words aligned only where the shape
  reports times (not for ``json`` and ``text``).
  ``stream=true`` answers with server-sent events as ASR windows finish (``_stream_job``).
- ``GET /v1/models``: the names this endpoint answers to.

Each request is one job of the job runner (``jobs``): the same Predictor, cross-job batching,
per-job logs, limits and deadline as the queue API. A client that disconnects cancels its job.
Failures use OpenAI's error object ``{"error": {"message", "type", "param", "code"}}`` and its
status codes, with ``x-should-retry: false`` where a retry cannot help (OpenAI's client
otherwise retries 408, 409, 429 and 5xx, resending the whole file). Bodies over
``MAX_REQUEST_BYTES`` (RunPod's limit: 30 MB) get 413 before they are read in full; a request
that is not streamed has ``LB_REQUEST_TIMEOUT_S`` (330 s, inside RunPod's 5.5 minutes), and one
that runs out is answered 408 saying to stream or use the queue endpoint. With
``API_KEY`` set, requests must carry ``Authorization: Bearer <API_KEY>``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hmac
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

import jobs
import openai_shapes
import rp_schema
from settings import read_env

logger = logging.getLogger("handler")

#: OpenAI's transcription model names: a request naming one gets this worker's default model.
OPENAI_MODEL_NAMES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize",
                      "gpt-transcribe")
# OpenAI's form fields and the request fields they fill.
_RENAMED = {"prompt": "initial_prompt", "temperature": "temperature", "language": "language",
            "response_format": "response_format", "url": "audio_file"}
# Accepted and not used: the worker always cuts audio at the VAD's speech pauses.
_IGNORED = ("chunking_strategy",)
# Announced by OpenAI's API and not served by this worker yet: refused by name.
_NOT_YET = ("include[]",)
# OpenAI's list fields (sent repeated, with "[]") and the request fields they fill.
_LISTS = {"timestamp_granularities": "timestamp_granularities", "known_speaker_names": "known_speaker_names",
          "known_speaker_references": "known_speaker_references"}
# Shapes a stream can end with (subtitles are whole files).
_STREAM_SHAPES = ("json", "text", "verbose_json", "diarized_json")
# Shapes that report word or segment times: alignment runs for them unless the request says.
_TIMED_SHAPES = ("verbose_json", "diarized_json", "srt", "vtt")
_TRANSLATION_SHAPES = ("json", "text", "srt", "vtt", "verbose_json")
# Form limits: the audio file and a file per known speaker's sample; OpenAI's fields and this
# worker's own leave room under 200 (a form of thousands of fields is refused at once).
MAX_FORM_FILES = 1 + rp_schema.MAX_KNOWN_SPEAKERS
MAX_FORM_FIELDS = 200
# How long a request body may take to arrive when LB_REQUEST_TIMEOUT_S is 0 (seconds).
BODY_TIMEOUT_S = 330.0


# Audio seconds per wall second a whole job (ASR, alignment, diarization) is assumed to reach
# when sizing LB_MAX_AUDIO_SECONDS's default: well under what was measured (BENCHMARKS: a
# 16-minute file at 180x real time on an H100; the base model at about 5x on a 2-core CPU), as
# the model, the audio and concurrent jobs vary.
ASSUMED_SPEED = {"cuda": 10.0, "cpu": 0.5}


@dataclass(frozen=True)
class DoorSettings:
    """The load-balancing door's ENV (declared in ``settings.ENV_TABLE``), read once.

    port, port_health: where the app and ``/ping`` listen (``port_health`` 0: on ``port``).
    api_key: the Bearer key requests must carry ("" = none). max_request_bytes: largest body.
    request_timeout_s: budget of a request that is not streamed (RunPod ends a load-balancing
    request after about 5.5 minutes; 0 = ``JOB_TIMEOUT_S`` alone); also how long a request's
    body may take to arrive.
    max_audio_s: longest audio (seconds) a request that is not streamed may carry, refused before
    it is decoded; 0 = ``request_timeout_s`` times the device's ``ASSUMED_SPEED``.
    """

    port: int = 80
    port_health: int = 0
    api_key: str = ""
    max_request_bytes: int = 30_000_000
    request_timeout_s: float = 330.0
    max_audio_s: float = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DoorSettings:
        values = read_env(environ, ("PORT", "PORT_HEALTH", "API_KEY", "MAX_REQUEST_BYTES", "LB_REQUEST_TIMEOUT_S",
                                    "LB_MAX_AUDIO_SECONDS"))
        return cls(values["PORT"], values["PORT_HEALTH"], values["API_KEY"], values["MAX_REQUEST_BYTES"],
                   values["LB_REQUEST_TIMEOUT_S"], values["LB_MAX_AUDIO_SECONDS"])

    def audio_cap(self, device: str) -> tuple[float, str]:
        """The cap on a request that is not streamed (seconds of audio) and its name for errors."""
        cap = self.max_audio_s or self.request_timeout_s * ASSUMED_SPEED.get(device, ASSUMED_SPEED["cpu"])
        return cap, ("LB_MAX_AUDIO_SECONDS: a request that is not streamed must finish within RunPod's 5.5 minutes; "
                     "send it with stream=true, or to the queue endpoint")


class OpenAIError(Exception):
    """A request refused before it became a job, in OpenAI's terms."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_response(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
                   retry: bool = False) -> JSONResponse:
    """OpenAI's error object; ``x-should-retry: false`` unless a retry may succeed."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers={"x-should-retry": "true" if retry else "false"})


# How each JobFailure kind reads in OpenAI's terms: (status, type, code, a retry may help).
_FAILURE_STATUS: Mapping[str, tuple[int, str, str | None, bool]] = {
    "invalid_request": (400, "invalid_request_error", None, False),
    "timeout": (408, "server_error", "job_timeout", False),
    "cancelled": (499, "server_error", "cancelled", False),
    "unavailable": (503, "server_error", "worker_unavailable", False),
    "upload": (502, "server_error", "result_upload_failed", True),
    "gpu_fault": (500, "server_error", "gpu_fault", True),
    "internal": (500, "server_error", None, True),
}


def failure_response(failure: jobs.JobFailure) -> JSONResponse:
    status, kind, code, retry = _FAILURE_STATUS[failure.kind]
    return error_response(status, failure.message, kind, failure.field, code, retry)


class Readiness:
    """The worker's start-up in a thread of its own, so ``/ping`` answers while models load."""

    def __init__(self) -> None:
        self.state = "loading"  # -> "ready", or "faulted" after a GPU fault
        self.device = "cpu"  # the Predictor's, once started
        self._thread = threading.Thread(target=self._start, name="start-up", daemon=True)

    def begin(self) -> None:
        self._thread.start()

    def _start(self) -> None:
        # A start-up failure is answered to every request (503 naming the cause), not by an
        # unhealthy /ping: RunPod would restart the worker into the same failure, silently.
        with contextlib.suppress(jobs.WorkerUnavailable):
            self.device = jobs.start_up().device
        if self.state == "loading":
            self.state = "ready"


def _form_value(spec: Mapping[str, Any], text: str) -> Any:
    """A form field's text as the request schema's type, where it parses (else the text, which
    the schema then refuses naming the field)."""
    if spec["nullable"] and text.strip().lower() in ("null", "none"):
        return None
    if spec["type"] is str:
        return text
    parsed = rp_schema.parse_scalar(spec["type"], text.strip())
    return text if parsed is None else parsed


async def _list_item(name: str, item: str | UploadFile) -> str:
    """One item of a list field as text: a known speaker's sample may also come as an uploaded
    file (then base64)."""
    if isinstance(item, str):
        return item
    if name == "known_speaker_references":
        return "data:application/octet-stream;base64," + base64.b64encode(await item.read()).decode("ascii")
    raise OpenAIError(400, f"{name} must be form fields, not files", name)


async def job_input_from_form(form: FormData, translate: bool) -> dict[str, Any]:
    """The job's input from OpenAI's form (and the worker's own fields beside it)."""
    job_input: dict[str, Any] = {}
    for name in _NOT_YET:
        if name in form:
            raise OpenAIError(400, f"{name.removesuffix('[]')} is not supported by this endpoint yet", name.removesuffix("[]"))
    upload = form.get("file")
    if isinstance(upload, UploadFile):
        data = await upload.read()
        if data:
            job_input["audio_base64"] = base64.b64encode(data).decode("ascii")
            job_input["audio_filename"] = upload.filename or "audio"
        elif "url" not in form:  # OpenAI's client always sends a file: an empty one stands aside for a url
            raise OpenAIError(400, "file is empty", "file")
    elif upload is not None:
        raise OpenAIError(400, "file must be an uploaded file (multipart/form-data)", "file")
    if "url" in form and "audio_base64" in job_input:
        raise OpenAIError(400, "give either file or url, not both", "file")
    if "url" not in form and "audio_base64" not in job_input:
        raise OpenAIError(400, "file is required (or url)", "file")
    model = str(form.get("model", "")).strip()
    if model and model not in OPENAI_MODEL_NAMES:
        job_input["model"] = model
    for name, field_name in _LISTS.items():
        items = form.getlist(f"{name}[]") + form.getlist(name)
        if items:
            job_input[field_name] = [await _list_item(name, item) for item in items]
    for name, value in form.multi_items():
        if name in ("file", "model", "stream", *_IGNORED, *_NOT_YET) or name.removesuffix("[]") in _LISTS:
            continue
        field = _RENAMED.get(name, name)
        if isinstance(value, UploadFile):
            raise OpenAIError(400, f"{name} must be a form field, not a file", name)
        spec = rp_schema.INPUT_SCHEMA.get(field) or rp_schema.INPUT_SCHEMA.get(_ALIASES.get(field, ""))
        job_input[field] = _form_value(spec, value) if spec is not None else value  # unknown: the schema names it
    shape = job_input.setdefault("response_format", "json")
    if translate:
        if "task" in job_input:
            raise OpenAIError(400, "task is set by the route: /v1/audio/translations translates", "task")
        job_input["task"] = "translate"
        if shape not in _TRANSLATION_SHAPES:
            raise OpenAIError(400, f"response_format must be one of {', '.join(_TRANSLATION_SHAPES)} for translations "
                                   f"(got {shape!r})", "response_format")
    if "diarization" not in job_input and "diarize" not in job_input:
        job_input["diarization"] = shape == "diarized_json"
    job_input.setdefault("align_output", shape in _TIMED_SHAPES)
    return job_input


_ALIASES = {alias: name for name, entry in rp_schema.INPUT_SCHEMA.items() for alias in entry.get("aliases", ())}


async def _bounded_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes, and with 408 when
    it has not all arrived after ``timeout_s`` seconds (a client trickling bytes holds no more)."""
    try:
        return await asyncio.wait_for(_read_body(request, limit), timeout_s)
    except TimeoutError:
        raise OpenAIError(408, f"the request body did not arrive within {timeout_s:g} s", "file",
                          "request_timeout") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OpenAIError(413, f"the request is {int(declared)} bytes, over this endpoint's limit of {limit} bytes "
                               "(MAX_REQUEST_BYTES); send a url instead, or use the queue endpoint", "file",
                          "request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise OpenAIError(413, f"the request is over this endpoint's limit of {limit} bytes (MAX_REQUEST_BYTES); "
                                   "send a url instead, or use the queue endpoint", "file", "request_too_large")
    return bytes(body)


def _replayed(request: Request, body: bytes) -> Request:
    """A request whose body is ``body`` (already read), for the form parser."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def _render(transcript: Any, options: rp_schema.RequestOptions) -> Any:
    return openai_shapes.render(transcript, options.response_format or "json", openai_shapes.granularities(options))


_TIMEOUT_HINT = ("; RunPod ends a load-balancing request after about 5.5 minutes (LB_REQUEST_TIMEOUT_S): send long "
                 "audio with stream=true, or to the queue endpoint")


async def _run_job(request: Request, job_input: dict[str, Any], readiness: Readiness, budget_s: float,
                   max_audio: tuple[float, str]) -> Response:
    """One job for one HTTP request; cancelled when the client disconnects."""
    job_id = f"lb-{uuid.uuid4().hex[:12]}"

    def run(control: Any) -> Any:
        return jobs.run_job(job_id, job_input, control, render=_render, render_error=lambda failure: failure)

    task = asyncio.ensure_future(jobs.run_in_job_thread(run, job_id, cancelled_by="the client disconnecting",
                                                        budget_s=budget_s, max_audio=max_audio))
    while not task.done():
        await asyncio.wait({task}, timeout=0.5)
        if not task.done() and await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return Response(status_code=499)  # nobody reads it
    result = task.result()
    if isinstance(result, jobs.JobFailure):
        if result.kind == "gpu_fault":
            readiness.state = "faulted"  # /ping says so: RunPod replaces this worker
        if result.kind == "timeout":
            result = dataclasses.replace(result, message=result.message + _TIMEOUT_HINT)
        return failure_response(result)
    if isinstance(result, str):
        return PlainTextResponse(result)
    result.pop("logs", None)  # in the container log; OpenAI's clients expect none
    return JSONResponse(rp_schema.json_safe(result))


def wants_stream(form: FormData) -> bool:
    """OpenAI's ``stream`` field (a form boolean); a value that is not one is refused by name."""
    value = str(form.get("stream", "false")).strip().lower()
    parsed = rp_schema.parse_scalar(bool, value)
    if parsed is None:
        raise OpenAIError(400, f"stream must be true or false (got {value!r})", "stream")
    return bool(parsed)


def _sse(event: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(rp_schema.json_safe(event), ensure_ascii=False)}\n\n".encode()


def _stream_job(job_input: dict[str, Any], readiness: Readiness) -> StreamingResponse:
    """One job for one request, answered as server-sent events in OpenAI's shapes: a
    ``transcript.text.delta`` per decoded window as ASR finishes it, then for ``diarized_json``
    a ``transcript.text.segment`` per speaker segment, then ``transcript.text.done`` (with the
    whole aligned/diarized answer in its extra ``whisperx`` field), or an ``error`` event that
    OpenAI's client raises. The client leaving ends the generator, which cancels the job."""
    job_id = f"lb-{uuid.uuid4().hex[:12]}"
    shape = job_input.get("response_format", "json")
    if shape not in _STREAM_SHAPES:
        raise OpenAIError(400, f"stream=true needs response_format {', '.join(_STREAM_SHAPES)} (got {shape!r})",
                          "response_format")

    async def events() -> AsyncIterator[bytes]:
        def run(control: Any, partial: Any) -> Any:
            return jobs.run_job(job_id, job_input, control, render=_render, render_error=lambda failure: failure,
                                partial=partial)

        sent = 0
        async for kind, item in jobs.stream_job(run, job_id, cancelled_by="the client disconnecting"):
            if kind == "partial":
                yield _sse({"type": "transcript.text.delta", "delta": item["text"] if sent == 0 else " " + item["text"],
                            "segment_id": f"seg_{sent}"})
                sent += 1
                continue
            if isinstance(item, jobs.JobFailure):
                if item.kind == "gpu_fault":
                    readiness.state = "faulted"
                status, kind_name, code, _retry = _FAILURE_STATUS[item.kind]
                yield _sse({"type": "error", "error": {"message": item.message, "type": kind_name, "param": item.field,
                                                       "code": code or str(status)}})
                return
            result: dict[str, Any] = {"text": item.rstrip("\n")} if isinstance(item, str) else item
            result.pop("logs", None)
            for segment in result.get("segments", []) if shape == "diarized_json" else []:
                yield _sse(segment)  # already OpenAI's transcript.text.segment objects
            yield _sse({"type": "transcript.text.done", "text": result["text"], "usage": result.get("usage"),
                        "whisperx": result})

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


def create_app(door: DoorSettings, readiness: Readiness | None = None) -> FastAPI:
    """The HTTP app: OpenAI's routes and RunPod's ``/ping``."""
    readiness = readiness or Readiness()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        readiness.begin()
        yield

    app = FastAPI(title="whisperx-worker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(OpenAIError)
    async def refused(_request: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.kind, exc.param, exc.code)

    app.add_api_route("/ping", ping_route(readiness), methods=["GET"])

    def authorize(request: Request) -> None:
        # Checked in each route, not in a middleware: Starlette's BaseHTTPMiddleware wraps the
        # request's receive channel, and the route could then no longer see a client leave.
        if door.api_key:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {door.api_key}".encode()):
                raise OpenAIError(401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key")

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        names = [*OPENAI_MODEL_NAMES, str(rp_schema.INPUT_SCHEMA["model"]["default"])]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "whisperx-worker"}
                                           for name in names]}

    async def audio(request: Request, translate: bool) -> Response:
        authorize(request)
        if readiness.state == "loading":
            # RunPod routes no traffic before /ping says 200; a direct caller may retry.
            return error_response(503, "the worker is still loading its models", "server_error", code="loading", retry=True)
        body = await _bounded_body(request, door.max_request_bytes, door.request_timeout_s or BODY_TIMEOUT_S)
        try:
            form = await _replayed(request, body).form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS,
                                                       max_part_size=door.max_request_bytes)
        except (HTTPException, MultiPartException) as exc:  # too many fields or files, a broken body
            raise OpenAIError(400, f"malformed multipart form: {getattr(exc, 'detail', None) or exc}") from None
        try:
            job_input = await job_input_from_form(form, translate)
            stream = wants_stream(form)
        finally:
            await form.close()
        if stream:
            return _stream_job(job_input, readiness)
        return await _run_job(request, job_input, readiness, door.request_timeout_s, door.audio_cap(readiness.device))

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await audio(request, translate=False)

    @app.post("/v1/audio/translations")
    async def translations(request: Request) -> Response:
        return await audio(request, translate=True)

    return app


def ping_route(readiness: Readiness) -> Any:
    async def ping() -> Response:
        if readiness.state == "loading":
            return Response(status_code=204)
        if readiness.state == "faulted":
            return JSONResponse({"status": "unhealthy"}, status_code=503)
        return JSONResponse({"status": "healthy"})

    return ping


def serve(environ: Mapping[str, str]) -> None:
    """Run the app (and ``/ping`` on ``PORT_HEALTH`` when it differs) until stopped."""
    import uvicorn

    door = DoorSettings.from_env(environ)
    readiness = Readiness()
    app = create_app(door, readiness)
    servers = [uvicorn.Server(uvicorn.Config(app, host="0.0.0.0", port=door.port, log_level="warning"))]
    if door.port_health and door.port_health != door.port:
        health = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        health.add_api_route("/ping", ping_route(readiness), methods=["GET"])
        servers.append(uvicorn.Server(uvicorn.Config(health, host="0.0.0.0", port=door.port_health, log_level="warning")))
    logger.info("OpenAI door listening on port %d (ping on %d)", door.port, door.port_health or door.port)

    async def run_all() -> None:
        await asyncio.gather(*(server.serve() for server in servers))

    asyncio.run(run_all())
