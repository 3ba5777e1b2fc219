"""A fake RunPod serverless API (``/v2/{endpoint}/...``) for offline, clock-driven tests.

See docs/runpod-api.md, What a test double must reproduce, for the behaviour it reproduces.  Every job's
life is computed from an injectable clock and a :class:`Script`, so a test can pass a fake clock and jump
through minutes of cold start without waiting.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Final

import aiohttp
from aiohttp import web

from .faults import Chaos


class _Missing:
    """Sentinel type: "no value", distinct from ``None`` (which is valid JSON output)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

TERMINAL: Final = frozenset({"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"})
RUN_MAX_BYTES: Final = 10 * 1024 * 1024
RUNSYNC_MAX_BYTES: Final = 20 * 1024 * 1024
RUN_RETENTION_S: Final = 30 * 60.0
RUNSYNC_RETENTION_S: Final = 60.0
_POLL_STEP_S: Final = 0.01
# Allowed methods per operation; "other" is anything that is not one of these routes.
_METHODS: Final[dict[str, frozenset[str]]] = {
    **dict.fromkeys(("run", "runsync", "cancel", "retry", "purge-queue"), frozenset({"POST"})),
    **dict.fromkeys(("status", "status-sync", "stream"), frozenset({"GET", "POST"})),
    "health": frozenset({"GET"}),
}
_JOB_OPS: Final = frozenset({"status", "status-sync", "stream", "cancel", "retry"})
OPS: Final = frozenset({*_METHODS, "other"})
# What RunPod's gateway says when it cannot reach the API behind it (Envoy), as its 5xx bodies.
_GATEWAY_ERROR: Final = (
    b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
)


@dataclass
class Script:
    """How one job behaves; times are seconds of the double's clock."""

    queue_s: float = 0.0
    run_s: float = 0.0
    outcome: str = "COMPLETED"  # COMPLETED | FAILED | TIMED_OUT | CANCELLED (platform-cancelled at run end)
    output: Any = MISSING
    error: Any = None
    progress: list[tuple[float, Any]] = field(default_factory=list)
    stuck: bool = False
    worker_id: str = "462u6mrq9s28h6"

    def __post_init__(self) -> None:
        if self.outcome not in TERMINAL:
            raise ValueError(f"unknown outcome {self.outcome!r}")


@dataclass
class RecordedRequest:
    """One request as the double saw it (recorded before it is answered)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, None when empty, raw bytes when not JSON
    at: float
    op: str
    endpoint_id: str | None
    job_id: str | None  # for run/runsync: the id of the job it created, if any
    chaos: str | None = None  # the Chaos kind that hit it ("reset", "503"...), None when none did


@dataclass
class WebhookCall:
    """One POST of a job's /status body to its webhook, as RunPod makes it when the job ends."""

    job_id: str
    url: str
    body: dict[str, Any]
    status: int | None  # the answer's HTTP status; None when the connection failed
    at: float


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _number(value: Any) -> float | None:
    """A policy number (ms) as seconds, ignoring junk (and bools, which are ints in Python)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value / 1000
    return None


@dataclass
class Job:
    """A submitted job; tests may inspect it or swap ``script`` (e.g. before a retry)."""

    id: str
    endpoint_id: str
    input: dict[str, Any]
    policy: dict[str, Any] | None
    webhook: str | None
    api_key: str
    script: Script
    submitted_at: float
    cancelled_at: float | None = None
    sync: bool = False
    attempt_at: float = math.nan  # start of the current attempt (submission, or the last /retry)
    retries: int = 0
    expired: bool = False
    purged: bool = False
    ttl_deadline: float | None = None  # set by ?ttl= on /status

    def __post_init__(self) -> None:
        if math.isnan(self.attempt_at):
            self.attempt_at = self.submitted_at

    def _timeline(self) -> tuple[float, float | None, str]:
        """(pick-up time, terminal time or None for never, terminal status) of the current attempt."""
        pick = self.attempt_at + self.script.queue_s
        end = None if self.script.stuck else pick + self.script.run_s
        outcome = self.script.outcome
        # The platform enforces executionTimeout even on a stuck job.
        limit = _number((self.policy or {}).get("executionTimeout"))
        if limit is not None and (end is None or end - pick > limit):
            end, outcome = pick + limit, "TIMED_OUT"
        return pick, end, outcome

    def status(self, now: float) -> str:
        """The RunPod status value at ``now``."""
        if self.cancelled_at is not None and self.cancelled_at <= now:
            return "CANCELLED"
        pick, end, outcome = self._timeline()
        if now < pick:
            return "IN_QUEUE"
        if end is None or now < end:
            return "IN_PROGRESS"
        return outcome

    def finished_at(self, now: float) -> float | None:
        """When the job became terminal, or None if it is not (yet) at ``now``."""
        if self.cancelled_at is not None and self.cancelled_at <= now:
            return self.cancelled_at
        _, end, _ = self._timeline()
        return end if end is not None and now >= end else None

    def gone(self, now: float) -> bool:
        """True once RunPod would answer 404: purged, TTL passed, or result retention over."""
        if self.expired or self.purged:
            return True
        ttl = _number((self.policy or {}).get("ttl"))
        deadlines = [self.ttl_deadline, None if ttl is None else self.submitted_at + ttl]
        if any(d is not None and now >= d for d in deadlines):
            return True
        done = self.finished_at(now)
        keep = RUNSYNC_RETENTION_S if self.sync else RUN_RETENTION_S
        return done is not None and now >= done + keep

    def _progress(self, elapsed: float) -> Any:
        latest: Any = MISSING
        for offset, value in sorted(self.script.progress, key=lambda p: p[0]):
            if offset <= elapsed:
                latest = value
        return latest

    def view(self, now: float) -> dict[str, Any]:
        """The /status body at ``now``."""
        st = self.status(now)
        body: dict[str, Any] = {"id": self.id, "status": st}
        pick = self._timeline()[0]
        if st == "IN_QUEUE" or (self.cancelled_at is not None and self.cancelled_at < pick):
            return body  # never picked up: no worker, no timings
        body["delayTime"] = _ms(pick - self.attempt_at)
        body["workerId"] = self.script.worker_id
        if st == "IN_PROGRESS":
            progress = self._progress(now - pick)
            if progress is not MISSING:
                # Production progress responses (issues #105, #250) carry executionTime too.
                body["output"] = progress
                body["executionTime"] = _ms(now - pick)
            return body
        stop = self.finished_at(now)
        body["executionTime"] = _ms((stop if stop is not None else now) - pick)
        if st in ("COMPLETED", "FAILED") and self.script.output is not MISSING:
            body["output"] = self.script.output
        if st == "FAILED" and self.script.error is not None:
            body["error"] = self.script.error
        return body


@dataclass(frozen=True)
class _Fault:
    kind: str  # "fail" | "drop" | "delay" | "stream"
    status: int = 0
    body: bytes = b""
    content_type: str = "text/plain"
    headers: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    chunks: Callable[[], Iterator[bytes]] | None = None  # "stream": the body, made as it is sent
    length: int | None = None  # "stream": the Content-Length announced, if any


def _json(data: Any, status: int = 200) -> web.Response:
    # RunPod emits keys sorted; mirroring that keeps recorded bodies easy to compare.
    return web.Response(status=status, text=json.dumps(data, sort_keys=True), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _empty(status: int) -> web.Response:
    # 401 and 429 are text/plain with an empty body (OAS-2025), so clients must not call .json() on them.
    return web.Response(status=status, body=b"", content_type="text/plain")


async def _stream(request: web.Request, fault: _Fault) -> web.StreamResponse:
    assert fault.chunks is not None
    response = web.StreamResponse(status=fault.status, headers={"Content-Type": fault.content_type})
    if fault.length is not None:
        response.content_length = fault.length
    await response.prepare(request)
    try:
        for chunk in fault.chunks():
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client stopped reading, as a client with a cap on answers does
    return response


def _drop(request: web.Request) -> web.Response:
    """Close the connection without answering."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response()  # never reaches the client: the socket is gone


def _parse_body(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _classify(path: str) -> tuple[str, str | None, str | None]:
    """(op, endpoint id, job id) of a request path."""
    parts = path.strip("/").split("/")
    if len(parts) < 2 or parts[0] != "v2":
        return "other", None, None
    endpoint, op, rest = parts[1], parts[2] if len(parts) > 2 else "", parts[3:]
    if op in _JOB_OPS and len(rest) == 1 and rest[0]:
        return op, endpoint, rest[0]
    if op in _METHODS and op not in _JOB_OPS and not rest:
        return op, endpoint, None
    return "other", endpoint, None


def _wait_param(query: Mapping[str, str], default_ms: int, max_ms: int) -> float:
    try:
        wait_ms = int(query.get("wait", default_ms))
    except ValueError:
        wait_ms = default_ms
    return min(max(wait_ms, 1000), max_ms) / 1000


class RunPodDouble:
    """An aiohttp server on 127.0.0.1 that plays RunPod's serverless API.

    ``chaos=Chaos(...)`` (doubles.faults), or setting ``chaos`` later, faults requests at random, seeded.
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = ("test-key",),
        endpoints: Iterable[str] = ("test-endpoint",),
        clock: Callable[[], float] = time.monotonic,
        default_script: Script | Callable[[dict[str, Any]], Script] | None = None,
        chaos: Chaos | None = None,
    ) -> None:
        self.api_keys = set(api_keys)
        self.endpoints = set(endpoints)
        self.clock = clock
        self.default_script = default_script
        self.requests: list[RecordedRequest] = []
        self.jobs: dict[str, Job] = {}
        self.health_workers: dict[str, int] | None = None
        self.chaos = chaos  # seeded random faults on every op (or chaos.routes); see doubles/faults.py
        self._scripts: deque[Script] = deque()
        self._faults: dict[str, deque[_Fault]] = {}
        self._limits: dict[str, tuple[int, float]] = {}
        self._hits: dict[tuple[str, str], deque[float]] = {}
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        # RunPod's webhooks: a job's /status body POSTed when it ends; not answered 200, sent again up to
        # `webhook_attempts - 1` times, `webhook_retry_s` apart (docs/runpod-api.md, Webhooks).
        self.webhook_calls: list[WebhookCall] = []
        self.webhook_attempts = 3
        self.webhook_retry_s = 10.0
        self.webhook_delay_s = 0.0  # how long after the end RunPod posts it
        self._lost_webhooks = 0
        self._webhook_tasks: set[asyncio.Task[None]] = set()
        self._webhook_session: aiohttp.ClientSession | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on an ephemeral port."""
        # Big enough to read oversize payloads so they get RunPod's 400 rather than aiohttp's 413.
        app = web.Application(client_max_size=2 * RUNSYNC_MAX_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Cancel handlers of disconnected clients and don't wait long for slow ones on close.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        """Stop serving (and sending webhooks)."""
        for task in self._webhook_tasks:
            task.cancel()
        await asyncio.gather(*self._webhook_tasks, return_exceptions=True)
        if self._webhook_session is not None:
            await self._webhook_session.close()
            self._webhook_session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RunPodDouble:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def api_url(self) -> str:
        """Base URL for clients (RUNPOD_API_URL / RUNPOD_ENDPOINT_BASE_URL)."""
        if self._port is None:
            raise RuntimeError("RunPodDouble not started")
        return f"http://127.0.0.1:{self._port}/v2"

    # -- test controls ---------------------------------------------------------------------------

    def lose_webhooks(self, count: int = 1) -> None:
        """The next ``count`` jobs' webhooks are never sent (RunPod's side failed): polling must find them."""
        self._lost_webhooks += count

    def webhooks_for(self, job_id: str) -> list[WebhookCall]:
        return [call for call in self.webhook_calls if call.job_id == job_id]

    def script_next(self, *scripts: Script) -> None:
        """Queue scripts for the next submitted jobs (FIFO), before ``default_script`` applies."""
        self._scripts.extend(scripts)

    def fail_next(
        self,
        op: str,
        status: int,
        *,
        count: int = 1,
        body: bytes = b"",
        content_type: str = "text/plain",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests of ``op`` with this canned response."""
        self._inject(op, count, _Fault("fail", status, body, content_type, dict(headers or {})))

    def stream_next(
        self,
        op: str,
        chunks: Callable[[], Iterator[bytes]],
        *,
        count: int = 1,
        status: int = 200,
        content_type: str = "application/json",
        length: int | None = None,
    ) -> None:
        """Answer the next ``count`` requests of ``op`` with a body streamed from ``chunks()`` (called afresh for
        each), so an answer far larger than the memory a test may use is never held whole: chunked, or with
        ``length`` as its Content-Length. Sending stops when the client stops reading."""
        self._inject(op, count, _Fault("stream", status, content_type=content_type, chunks=chunks, length=length))

    def drop_next(self, op: str, *, count: int = 1) -> None:
        """Close the connection without answering the next ``count`` requests of ``op``."""
        self._inject(op, count, _Fault("drop"))

    def delay_next(self, op: str, seconds: float, *, count: int = 1) -> None:
        """Sleep ``seconds`` (real time) before handling the next ``count`` requests of ``op``."""
        self._inject(op, count, _Fault("delay", seconds=seconds))

    def set_rate_limit(self, op: str, limit: int, window_s: float) -> None:
        """Allow ``limit`` requests of ``op`` per endpoint in any ``window_s`` (clock) window."""
        self._check_op(op)
        self._limits[op] = (limit, window_s)

    def expire(self, job_id: str) -> None:
        """Force retention expiry: the job answers 404 from now on."""
        self.jobs[job_id].expired = True

    def requests_for(self, op: str, job_id: str | None = None) -> list[RecordedRequest]:
        """Recorded requests of ``op`` (optionally only those about ``job_id``)."""
        return [r for r in self.requests if r.op == op and (job_id is None or r.job_id == job_id)]

    @property
    def chaos(self) -> Chaos | None:
        """Seeded random faults (doubles.faults.Chaos); ``routes`` are ops, None meaning all of them."""
        return self._chaos

    @chaos.setter
    def chaos(self, chaos: Chaos | None) -> None:
        if chaos is not None and chaos.routes is not None:
            for op in chaos.routes:  # a misspelt op would never be faulted
                self._check_op(op)
        self._chaos = chaos

    @staticmethod
    def _check_op(op: str) -> None:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; expected one of {sorted(OPS)}")

    def _inject(self, op: str, count: int, fault: _Fault) -> None:
        self._check_op(op)
        self._faults.setdefault(op, deque()).extend([fault] * count)

    # -- request handling ------------------------------------------------------------------------

    def _rate_limited(self, op: str, endpoint: str | None) -> bool:
        rule = self._limits.get(op)
        if rule is None or endpoint is None:
            return False
        limit, window = rule
        now = self.clock()
        hits = self._hits.setdefault((endpoint, op), deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            return True  # rejected requests are not counted, so a backing-off client gets through
        hits.append(now)
        return False

    def _auth_key(self, request: web.Request) -> str | None:
        # Both "Bearer <key>" (SDKs) and the raw key (DOCS curl examples) are accepted.
        header = request.headers.get("Authorization", "").strip()
        key = header[7:].strip() if header.lower().startswith("bearer ") else header
        return key if key in self.api_keys else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            raw: bytes | None = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raw = None
        op, endpoint, job_id = _classify(request.path)
        query, headers, body = dict(request.query), dict(request.headers), _parse_body(raw)
        rec = RecordedRequest(request.method, request.path, query, headers, body, self.clock(), op, endpoint, job_id)
        self.requests.append(rec)
        faults = self._faults.get(op)
        fault = faults.popleft() if faults else None
        if fault is None and (chaos := self._chaos) is not None and (kind := chaos.draw(op)) is not None:
            rec.chaos = kind  # answered before the rate limit counts it: a faulted request has no effect at all
            if kind == "reset":
                return _drop(request)
            if kind != "slow":
                return web.Response(status=int(kind), body=_GATEWAY_ERROR, content_type="text/plain")
            await asyncio.sleep(chaos.slow_s)
        limited = self._rate_limited(op, endpoint)
        if fault is not None and fault.kind == "fail":
            return web.Response(
                status=fault.status, body=fault.body, content_type=fault.content_type, headers=fault.headers
            )
        if fault is not None and fault.kind == "stream":
            return await _stream(request, fault)
        if fault is not None and fault.kind == "drop":
            return _drop(request)
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
        if limited:
            return _empty(429)
        key = self._auth_key(request)
        if key is None:
            return _empty(401)
        if op == "other":
            return _error(404, "not found")
        if request.method not in _METHODS[op]:
            return _error(405, "method not allowed")
        assert endpoint is not None
        if endpoint not in self.endpoints:
            return _error(404, "endpoint not found")
        if op in ("run", "runsync"):
            return await self._submit(request, rec, raw, key, sync=op == "runsync")
        if op == "purge-queue":
            return self._purge(endpoint)
        if op == "health":
            return self._health(endpoint)
        assert job_id is not None
        job = self.jobs.get(job_id)
        if job is None or job.endpoint_id != endpoint or job.api_key != key or job.gone(self.clock()):
            return _error(404, "job not found")
        if op == "status-sync":
            await self._wait_terminal(job, _wait_param(request.query, 90000, 90000))
            if job.gone(self.clock()):
                return _error(404, "job not found")
            op = "status"
        return self._job_op(op, job, request.query)

    async def _submit(
        self, request: web.Request, rec: RecordedRequest, raw: bytes | None, key: str, *, sync: bool
    ) -> web.Response:
        limit = RUNSYNC_MAX_BYTES if sync else RUN_MAX_BYTES
        if raw is None or len(raw) > limit:
            return _error(400, f"request body exceeds {limit} bytes")
        body = rec.body
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        if not isinstance(body.get("input"), dict):
            return _error(400, "'input' must be a JSON object")
        policy, webhook = body.get("policy"), body.get("webhook")
        now = self.clock()
        job = Job(
            id=f"{'sync-' if sync else ''}{uuid.uuid4()}-u1",
            endpoint_id=rec.endpoint_id or "",
            input=body["input"],
            policy=policy if isinstance(policy, dict) else None,
            webhook=webhook if isinstance(webhook, str) else None,
            api_key=key,
            script=self._next_script(body["input"]),
            submitted_at=now,
            sync=sync,
        )
        self.jobs[job.id] = job
        rec.job_id = job.id
        if job.webhook is not None and not sync:
            if self._lost_webhooks:
                self._lost_webhooks -= 1
            else:
                task = asyncio.get_running_loop().create_task(self._send_webhook(job))
                self._webhook_tasks.add(task)
                task.add_done_callback(self._webhook_tasks.discard)
        if not sync:
            return _json({"id": job.id, "status": "IN_QUEUE"})
        await self._wait_terminal(job, _wait_param(request.query, 90000, 300000))
        now = self.clock()
        if job.gone(now):
            return _error(404, "job not found")
        if job.status(now) in TERMINAL:
            return _json(job.view(now))
        return _json({"id": job.id, "status": job.status(now)})

    async def _send_webhook(self, job: Job) -> None:
        assert job.webhook is not None
        await self._wait_terminal(job, 3600.0)
        await asyncio.sleep(self.webhook_delay_s)
        if self._webhook_session is None:
            self._webhook_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for attempt in range(self.webhook_attempts):
            if attempt:
                await asyncio.sleep(self.webhook_retry_s)
            # The production body: what /status says, plus the job's input and webhook (issue #409).
            body = job.view(self.clock()) | {"input": job.input, "webhook": job.webhook}
            status: int | None = None
            try:
                async with self._webhook_session.post(job.webhook, json=body) as response:
                    status = response.status
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            self.webhook_calls.append(WebhookCall(job.id, job.webhook, body, status, self.clock()))
            if status == 200:
                return

    def _next_script(self, job_input: dict[str, Any]) -> Script:
        if self._scripts:
            return self._scripts.popleft()
        if isinstance(self.default_script, Script):
            return replace(self.default_script)  # a copy, so a test mutating one job's script affects only it
        if self.default_script is not None:
            return self.default_script(job_input)
        return Script()

    async def _wait_terminal(self, job: Job, wait_s: float) -> None:
        """Return when the job is terminal/gone, or ``wait_s`` passed on the double's clock or in real time.

        Real time bounds the wait too, so a fake clock nobody advances cannot hang a test forever.
        """
        loop = asyncio.get_running_loop()
        start, real_start = self.clock(), loop.time()
        while True:
            now = self.clock()
            if job.gone(now) or job.status(now) in TERMINAL:
                return
            if now - start >= wait_s or loop.time() - real_start >= wait_s:
                return
            await asyncio.sleep(_POLL_STEP_S)

    def _job_op(self, op: str, job: Job, query: Mapping[str, str]) -> web.Response:
        now = self.clock()
        status = job.status(now)
        if op == "status":
            view = job.view(now)
            try:
                ttl_ms = int(query["ttl"])
            except (KeyError, ValueError):
                pass
            else:  # ?ttl= shortens how long the job stays readable from now on
                deadline = now + ttl_ms / 1000
                job.ttl_deadline = deadline if job.ttl_deadline is None else min(job.ttl_deadline, deadline)
            return _json(view)
        if op == "cancel":
            if status not in TERMINAL:
                job.cancelled_at = now
                status = "CANCELLED"
            return _json({"id": job.id, "status": status})
        if op == "retry":
            if status not in ("FAILED", "TIMED_OUT"):
                return _error(400, f"job in status {status} cannot be retried")
            job.attempt_at, job.cancelled_at, job.retries = now, None, job.retries + 1
            return _json({"id": job.id, "status": "IN_QUEUE"})
        # stream: minimal; non-generator handlers have nothing to stream but the final output.
        view = job.view(now)
        chunks = [{"output": view["output"]}] if status == "COMPLETED" and "output" in view else []
        return _json({"status": status, "stream": chunks})

    def _purge(self, endpoint: str) -> web.Response:
        now = self.clock()
        live = [j for j in self.jobs.values() if j.endpoint_id == endpoint and not j.gone(now)]
        queued = [j for j in live if j.status(now) == "IN_QUEUE"]
        for job in queued:
            job.purged = True
        return _json({"removed": len(queued), "status": "completed"})

    def _health(self, endpoint: str) -> web.Response:
        now = self.clock()
        live = [j for j in self.jobs.values() if j.endpoint_id == endpoint and not j.gone(now)]
        counts = Counter(j.status(now) for j in live)
        jobs = {
            "completed": counts["COMPLETED"],
            "failed": counts["FAILED"] + counts["TIMED_OUT"],
            "inProgress": counts["IN_PROGRESS"],
            "inQueue": counts["IN_QUEUE"],
            "retried": sum(j.retries for j in live),
        }
        workers = self.health_workers
        if workers is None:
            running = counts["IN_PROGRESS"]
            workers = {"idle": 0, "initializing": 0, "ready": 0, "running": running, "throttled": 0}
        return _json({"jobs": jobs, "workers": dict(workers)})
