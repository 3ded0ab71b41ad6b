"""An OpenAI-compatible HTTP server in front of the emulated engine: what a vLLM 0.33 replica answers, or, for a
deployment whose profile runs another engine, that engine's health, readiness and metrics endpoints.

Endpoints (as vLLM's API server; ``reference/vllm.md``):

- ``POST /v1/chat/completions``, ``POST /v1/completions``: streamed (SSE ``data: {...}`` chunks, a usage
  chunk with ``stream_options.include_usage``, then ``data: [DONE]``) or one JSON body with ``usage``.
  ``max_tokens`` (or ``max_completion_tokens``) is the exact output length (finish_reason ``length``: the
  emulated model never stops early then). Without it the emulated model "stops" (``stop``) after the
  deployment's mean output length, or runs to ``max_model_len`` with ``ignore_eos`` (``length``). Errors in
  vLLM's format: 400 when prompt + max_tokens exceed ``max_model_len``, 404 for an unknown model, 401 without
  the API key. Only ``n = 1``. Prompt lengths: see :mod:`infra.emulate.protocol`. A client that disconnects
  aborts its request (``finished_reason="abort"``); it leaves the engine at once.
- ``GET /v1/models`` (served name and LoRA adapters), ``GET /health`` (503 once the engine died),
  ``GET|POST /ping``, ``GET /version``, ``GET /load``, ``GET /metrics`` (:mod:`infra.emulate.metrics`).
- ``GET|POST /_emulator/faults``: the fault-injection test hook (:mod:`infra.emulate.faults`); outside
  ``/v1`` on purpose, so no OpenAI client reaches it by accident, but it needs the API key when one is set.

Another engine (the profile's ``engine``, a key of ``engines.yaml``): the same OpenAI API and fault hook, its
catalog health and readiness paths (Ollama's are ``/``) and its metrics path (TensorRT-LLM's
``/prometheus/metrics``; Ollama has none) with its catalog signals (:mod:`infra.emulate.signals`); vLLM's
``/ping``, ``/version`` and ``/load`` stay vLLM's. The API answers stay vLLM's format for every engine.

The API key (``--api-key`` / ``VLLM_API_KEY``) is checked like vLLM does: ``Authorization: Bearer <key>`` on
paths under ``/v1`` (and ``/v2``, ``/inference``, ``/cohere``); ``/metrics``, ``/health``, ``/ping`` stay
open. LoRA adapters are served like the base model (the emulator models no adapter cost).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from infra.catalog import load_catalog
from infra.catalog.schema import InferenceEngine
from infra.emulate.engine import Engine, EngineDead, Request
from infra.emulate.faults import FaultPlan
from infra.emulate.metrics import CacheInfo, WorkModel
from infra.emulate.protocol import (
    ApiError,
    Completion,
    bad_request,
    chat_prompt_tokens,
    completion_prompt_tokens,
    sse,
    token_text,
)
from infra.emulate.signals import ReplicaTelemetry, replica_metrics
from infra.plan.optimize import DeploymentPlan
from infra.render.vllm import VLLM_VERSION
from infra.spec.profile import HuggingFaceWeights, LocalWeights, ModelProfile, S3Weights

PROTECTED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere", "/_emulator")
SHUTDOWN_TIMEOUT_S = 2.0  # in-flight handlers get this long when the emulator stops
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ServedModel:
    """What the replica serves: names as clients use them, and the limits the API server checks."""

    name: str
    root: str  # the model path vLLM was started with (the weights location)
    max_model_len: int
    default_output_tokens: int  # the emulated model's natural answer length (no max_tokens)
    lora_adapters: tuple[tuple[str, str], ...] = ()  # (name, weights location)
    max_loras: int = 1


@dataclass(frozen=True)
class _Job:
    model: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str
    max_tokens: int
    max_tokens_param: int | None
    stream: bool
    include_usage: bool


def _weights_root(weights: HuggingFaceWeights | S3Weights | LocalWeights) -> str:
    if isinstance(weights, HuggingFaceWeights):
        return weights.repo
    if isinstance(weights, S3Weights):
        return weights.uri
    return weights.path


def served_model(profile: ModelProfile, max_model_len: int, default_output_tokens: int) -> ServedModel:
    max_loras = profile.engine_args.get("max-loras", 1)
    return ServedModel(
        name=profile.resolved_served_name,
        root=_weights_root(profile.weights),
        max_model_len=max_model_len,
        default_output_tokens=default_output_tokens,
        lora_adapters=tuple((a.name, _weights_root(a.weights)) for a in profile.lora_adapters),
        max_loras=max_loras if isinstance(max_loras, int) and not isinstance(max_loras, bool) else 1,
    )


class Emulator:
    """One emulated replica: engine, metrics and HTTP server. Use inside a running event loop.

    ``on_crash`` runs after the "crash" fault closed the listener (``gpufleet emulate`` exits there).
    ``inference_engine``: the catalog engine whose endpoints it serves (default vLLM); ``metrics`` must be
    that engine's (:func:`~infra.emulate.signals.replica_metrics`).
    """

    def __init__(
        self,
        engine: Engine,
        metrics: ReplicaTelemetry,
        model: ServedModel,
        *,
        inference_engine: InferenceEngine | None = None,
        api_key: str | None = None,
        faults: FaultPlan | None = None,
        on_crash: Callable[[], None] | None = None,
        seed: int = 0,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.model = model
        self.inference_engine = inference_engine or load_catalog().engines["vllm"]
        self.on_crash = on_crash
        # Only engines that read a key from the environment get one from gpufleet (infra/render/engines): the
        # others (SGLang, Ollama, TensorRT-LLM) serve without a key behind the LB, and so does their emulation.
        checks_key = self.inference_engine.capabilities.api_key == "env"
        self._key_hash = hashlib.sha256(api_key.encode()).digest() if api_key and checks_key else None
        self._rng = random.Random(seed)
        self._faults = FaultPlan()
        self._unhung = asyncio.Event()
        self._unhung.set()
        self._runner: web.AppRunner | None = None
        self._crash_task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._lora_running: collections.Counter[str] = collections.Counter()
        self.url = ""
        self.port = 0
        metrics.bind(engine)
        self.app = self._build_app()
        self.set_faults(faults or FaultPlan())

    @classmethod
    def for_deployment(
        cls,
        plan: DeploymentPlan,
        *,
        time_scale: float = 1.0,
        compute_scale: float = 1.0,
        bandwidth_scale: float = 1.0,
        api_key: str | None = None,
        faults: FaultPlan | None = None,
        on_crash: Callable[[], None] | None = None,
    ) -> Emulator:
        """The planned replica of a deployment (its chosen option), serving the deployment's model names with
        the endpoints and metrics of its profile's engine."""
        if plan.chosen is None:
            raise ValueError(f"deployment '{plan.deployment.name}' has no feasible plan to emulate")
        replica = plan.chosen.replica
        config = replica.engine_config()
        model = served_model(plan.profile, config.max_model_len,
                             round(plan.deployment.traffic.output_tokens.mean_tokens))
        inference_engine = plan.engine
        metrics = replica_metrics(
            inference_engine,
            model.name,
            config,
            cache=CacheInfo(config.block_size, config.num_blocks, replica.limits.gpu_memory_utilization,
                            replica.precision.kv_cache_dtype),
            work=WorkModel(
                params_per_gpu=replica.memory.weights / replica.step.weight_bytes,
                weight_bytes_per_gpu=replica.memory.weights,
                kv_bytes_per_token=replica.memory.kv_per_token,
            ),
            lora_adapters=tuple(name for name, _ in model.lora_adapters),
        )
        engine = Engine.for_replica(replica, compute_scale=compute_scale, bandwidth_scale=bandwidth_scale,
                                    time_scale=time_scale, observer=metrics)
        return cls(engine, metrics, model, inference_engine=inference_engine, api_key=api_key, faults=faults,
                   on_crash=on_crash)

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start the engine and listen; returns the base URL (port 0 picks a free port)."""
        self.engine.start()
        # Why handler_cancellation: a client that disconnects must abort its request in the engine (as vLLM
        # does), also while a non-streaming request waits for its tokens and nothing is being written.
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None,
                                     shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.port = int(bound[1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving: requests in flight end as aborted, hung ones are released."""
        self._unhung.set()
        self.engine.thaw()
        await self.engine.stop()
        await self._close_listener()
        if self._crash_task is not None and self._crash_task is not asyncio.current_task():
            self._crash_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._crash_task

    async def _close_listener(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def faults(self) -> FaultPlan:
        return self._faults

    def set_faults(self, plan: FaultPlan) -> None:
        self._faults = plan
        self.engine.slowdown = plan.slowdown if plan.mode == "slow" else 1.0
        if plan.mode == "hang":
            self._unhung.clear()
            self.engine.freeze()
        else:
            self._unhung.set()
            self.engine.thaw()

    def crash(self) -> None:
        """The engine dies now; after ``linger_s`` the listener closes and ``on_crash`` runs."""
        if self._crash_task is not None:
            return
        self.engine.kill()
        self._crash_task = asyncio.get_running_loop().create_task(self._after_crash())

    async def _after_crash(self) -> None:
        await asyncio.sleep(self._faults.linger_s)
        await self._close_listener()
        if self.on_crash is not None:
            self.on_crash()

    # ------------------------------------------------------------------------------------------ routing

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._text)
        app.router.add_get("/v1/models", self._models)
        served = self.inference_engine
        for path in dict.fromkeys((served.health.path, served.health.ready_for(self.model.name))):
            app.router.add_get(path, self._health)
        if served.name == "vllm":  # vLLM's API server's own extras
            app.router.add_get("/ping", self._health)
            app.router.add_post("/ping", self._health)
            app.router.add_get("/version", self._version)
            app.router.add_get("/load", self._load)
        if served.metrics.path is not None:
            app.router.add_get(served.metrics.path, self._metrics)
        app.router.add_get("/_emulator/faults", self._get_faults)
        app.router.add_post("/_emulator/faults", self._post_faults)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (self._key_hash is not None and request.method != "OPTIONS"
                and request.path.startswith(PROTECTED_PREFIXES) and not self._authorized(request)):
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or self._key_hash is None:
            return False
        return secrets.compare_digest(hashlib.sha256(token.encode()).digest(), self._key_hash)

    # ------------------------------------------------------------------------------------------ small endpoints

    async def _health(self, request: web.Request) -> web.Response:
        await self._unhung.wait()
        return web.Response(status=503 if self.engine.dead else 200)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VLLM_VERSION})

    async def _load(self, request: web.Request) -> web.Response:
        return web.json_response({"server_load": self._in_flight})

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _models(self, request: web.Request) -> web.Response:
        created = int(time.time())

        def card(name: str, root: str, parent: str | None, max_model_len: int | None) -> dict[str, Any]:
            permission = {
                "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": created,
                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                "organization": "*", "group": None, "is_blocking": False,
            }
            return {"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": root,
                    "parent": parent, "max_model_len": max_model_len, "permission": [permission]}

        m = self.model
        cards = [card(m.name, m.root, None, m.max_model_len)]
        cards += [card(name, root, m.name, None) for name, root in m.lora_adapters]
        return web.json_response({"object": "list", "data": cards})

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self._faults.to_json())

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            plan = FaultPlan.from_json(await request.json())
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            return _error(bad_request(str(exc)))
        self.set_faults(plan)
        return web.json_response(plan.to_json())

    # ------------------------------------------------------------------------------------------ completions

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _text(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(bad_request("request body is not valid JSON"))
        await self._unhung.wait()  # the "hang" fault: accepted, never answered (until cleared)
        try:
            job = self._parse(body, chat)
        except ApiError as exc:
            return _error(exc)
        faults = self._faults
        if faults.mode == "error" and faults.hits(self._rng):
            self.metrics.on_error()
            return _error(ApiError(500, "Emulated internal server error (fault injection).", "InternalServerError"))
        if faults.mode == "crash" and faults.hits(self._rng):
            self.crash()
        drop_after = faults.drop_after if faults.mode == "drop" and faults.hits(self._rng) else None
        prefix = "chatcmpl" if chat else "cmpl"
        try:
            req = self.engine.submit(job.prompt_tokens, job.output_tokens, job.finish_reason,
                                     max_tokens=job.max_tokens, max_tokens_param=job.max_tokens_param,
                                     request_id=f"{prefix}-{uuid.uuid4().hex}")
        except EngineDead:
            return _error(ApiError(500, ENGINE_DEAD, "InternalServerError"))
        self._in_flight += 1
        self._lora_started(job.model, +1)
        completion = Completion(chat, req.request_id, job.model)
        try:
            if job.stream:
                return await self._stream(request, job, req, completion, drop_after)
            return await self._collect(request, job, req, completion, drop_after)
        finally:
            self.engine.abort(req)  # no-op when it finished; a disconnect (cancellation) aborts it here
            self._in_flight -= 1
            self._lora_started(job.model, -1)

    def _parse(self, body: Any, chat: bool) -> _Job:
        if not isinstance(body, dict):
            raise bad_request("request body must be a JSON object")
        model = body.get("model") or self.model.name
        if model != self.model.name and model not in {name for name, _ in self.model.lora_adapters}:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        prompt = chat_prompt_tokens(body.get("messages")) if chat else completion_prompt_tokens(body.get("prompt"))
        if body.get("n", 1) != 1:
            raise bad_request("the emulator serves n = 1 only", "n")
        max_tokens = body.get("max_completion_tokens") if chat else None
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise bad_request("max_tokens must be an integer >= 1", "max_tokens")
        limit = self.model.max_model_len
        if prompt >= limit or (max_tokens is not None and prompt + max_tokens > limit):
            self.metrics.on_rejected()
            wanted = f"requested {max_tokens} output tokens and your prompt contains" if max_tokens else \
                "your request has"
            total = prompt + (max_tokens or 0)
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, you {wanted} at least {prompt} "
                f"input tokens, for a total of at least {total} tokens. Please reduce the length of the input "
                "prompt or the number of requested output tokens.",
                "input_tokens",
            )
        room = limit - prompt
        if max_tokens is not None:
            output, reason = max_tokens, "length"
        elif body.get("ignore_eos"):
            output, reason = room, "length"
        else:
            output = min(self.model.default_output_tokens, room)
            reason = "stop" if output < room else "length"
        stream = bool(body.get("stream"))
        options = body.get("stream_options") or {}
        include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))
        return _Job(model, prompt, output, reason, max_tokens or room, max_tokens, stream, include_usage)

    async def _stream(self, request: web.Request, job: _Job, req: Request, completion: Completion,
                      drop_after: int | None) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
        sent = 0
        try:
            async for index in req.tokens():
                if drop_after is not None and sent >= drop_after:
                    return self._drop(request, req, resp)
                if not resp.prepared:
                    await resp.prepare(request)
                    if completion.chat:
                        await resp.write(sse(completion.role_chunk()))
                last = index == req.output_tokens - 1 and req.finished in ("stop", "length")
                await resp.write(sse(completion.token_chunk(token_text(index), req.finished if last else None)))
                sent += 1
            if req.finished not in ("stop", "length"):
                return await self._stream_failed(request, req, resp)
            if job.include_usage:
                await resp.write(sse(completion.usage_chunk(job.prompt_tokens, req.emitted)))
            await resp.write(sse("[DONE]"))
            await resp.write_eof()
        except ConnectionResetError:  # the client went away between two writes (aiohttp's reset error)
            self.engine.abort(req)
        return resp

    async def _stream_failed(self, request: web.Request, req: Request, resp: web.StreamResponse) -> web.StreamResponse:
        """The engine died (error) or the server is stopping (abort) while the request ran."""
        if req.finished == "error":
            error = ApiError(500, ENGINE_DEAD, "InternalServerError")
            if not resp.prepared:
                return _error(error)
            await resp.write(sse(error.body()))  # vLLM reports errors mid-stream as one more event
            await resp.write(sse("[DONE]"))
            await resp.write_eof()
            return resp
        return resp if resp.prepared else web.Response(status=503)

    async def _collect(self, request: web.Request, job: _Job, req: Request, completion: Completion,
                       drop_after: int | None) -> web.StreamResponse:
        received = 0
        async for _ in req.tokens():
            received += 1
            if drop_after is not None and received >= drop_after:
                break
        if drop_after is not None and (drop_after == 0 or req.finished is None):
            return self._drop(request, req, web.StreamResponse())
        if req.finished == "error":
            return _error(ApiError(500, ENGINE_DEAD, "InternalServerError"))
        if req.finished not in ("stop", "length"):
            return web.Response(status=503)
        text = "".join(token_text(i) for i in range(req.emitted))
        return web.json_response(completion.final(text, req.finished, job.prompt_tokens, req.emitted))

    def _drop(self, request: web.Request, req: Request, resp: web.StreamResponse) -> web.StreamResponse:
        """The "drop" fault: the request leaves the engine (abort) and the connection closes under the client."""
        self.engine.abort(req)
        if request.transport is not None:
            request.transport.close()
        return resp

    def _lora_started(self, model: str, delta: int) -> None:
        if model == self.model.name:
            return
        self._lora_running[model] += delta
        self.metrics.on_lora(",".join(sorted(name for name, n in self._lora_running.items() if n > 0)))


def _error(exc: ApiError) -> web.Response:
    return web.Response(text=json.dumps(exc.body()), status=exc.status, content_type="application/json")
