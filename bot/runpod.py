"""Typed async client for RunPod's serverless HTTP API (docs/runpod-api.md).

One `aiohttp.ClientSession` is shared by every client; a client is cheap and bound to one key and
endpoint. Errors are the domain errors of `bot.errors`; transient failures are retried with capped,
jittered exponential backoff, and a `POST /run` is only retried when RunPod provably did not take it.
Every request first takes a slot from a per-endpoint, per-operation `RateLimiter` shared by all clients
of one `RateLimiters` registry, so however many jobs are followed at once, RunPod's limits
(docs/runpod-api.md, Rate limits) are never exceeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import orjson

from bot import safejson
from bot.config import Secret
from bot.errors import (
    RunPodAnswerRefused,
    RunPodAnswerTooLarge,
    RunPodAuthError,
    RunPodBadResponse,
    RunPodError,
    RunPodNotFound,
    RunPodRateLimited,
    RunPodRejected,
    RunPodUnavailable,
    RunPodUnsupported,
)
from bot.ratelimit import Clock, RateLimit, RateLimiter, Sleep

log = logging.getLogger(__name__)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # endpoint and job ids: never anything path-like
_MISSING: Any = object()

# The most of an answer that is read. A finished job's answer carries its pictures as base64 (docs/runpod-api.md,
# Output shapes of image workers): at most MAX_IMAGES (bot/images.py) of them, a 1024x1024 PNG is 1-2 MB and an
# upscaled one a few MB, 4/3 of that in base64, so ten of 4.5 MB fit. Whatever a worker returns beyond that is
# refused unread: a Content-Length over it before reading, a body streamed past it as soon as it does.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# The largest body RunPod takes for `POST /run` (docs/runpod-api.md, Operations): a larger one is answered 400. A
# job whose input would be larger is refused here, in words, before anything is sent.
RUN_BODY_LIMIT = 10 * 1024 * 1024
# Error answers are only quoted (200 characters at most): the rest of a long one is left unread.
_ERROR_BYTES = 64 * 1024
_CHUNK = 256 * 1024


class JobState(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT)


@dataclass(frozen=True)
class JobStatus:
    id: str
    state: JobState
    delay_ms: int | None = None  # time spent in the queue, once a worker took the job
    execution_ms: int | None = None
    worker_id: str | None = None
    output: Any = field(default=None, repr=False)  # progress while IN_PROGRESS, the result once COMPLETED
    has_output: bool = False
    error: Any = None


@dataclass(frozen=True)
class Health:
    in_queue: int = 0
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    idle: int = 0
    running: int = 0
    initializing: int = 0
    ready: int = 0
    throttled: int = 0

    @property
    def ready_workers(self) -> int:
        """Workers waiting for a job: one can start now, without a cold start."""
        return self.idle + self.ready

    @property
    def warm_workers(self) -> int:
        """Workers that can start a job without a cold start."""
        return self.idle + self.running + self.ready


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 10.0
    max_retry_after: float = 60.0  # never trust a Retry-After that would stall a job for minutes

    def backoff(self, attempt: int) -> float:
        """Full jitter: many jobs hit by the same 429 burst must not come back in step."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


# Called with a 200 answer's Content-Length (-1 if unknown) before its body is read; may wait. The body
# stays in the socket meanwhile, so a caller can bound how many megabyte answers it holds at once.
Admit = Callable[[int], Awaitable[None]]


# RunPod's per-endpoint limits by operation (docs/runpod-api.md, Rate limits). /health is not in RunPod's table;
# it is given the /status limit so that a flood of queue-info lookups is still metered.
RUNPOD_RATE_LIMITS: Mapping[str, RateLimit] = {
    "run": RateLimit(1000, 10.0),
    "runsync": RateLimit(2000, 10.0),
    "status": RateLimit(2000, 10.0),
    "status-sync": RateLimit(2000, 10.0),
    "stream": RateLimit(2000, 10.0),
    "cancel": RateLimit(100, 10.0),
    "purge-queue": RateLimit(2, 10.0),
    "health": RateLimit(2000, 10.0),
}


class RateLimiters:
    """One `RateLimiter` per (endpoint, operation), shared by every client that uses this registry.

    `headroom` and `slack` keep us under RunPod's own count: 10 % fewer requests, in a window half a second
    longer, so that network jitter between our clock and RunPod's cannot squeeze two bursts into one window."""

    def __init__(
        self,
        limits: Mapping[str, RateLimit] = RUNPOD_RATE_LIMITS,
        *,
        headroom: float = 0.9,
        slack: float = 0.5,
        clock: Clock = time.monotonic,
    ) -> None:
        self._limits = dict(limits)
        self._headroom = headroom
        self._slack = slack
        self._clock = clock
        self._limiters: dict[tuple[str, str], RateLimiter] = {}

    def get(self, endpoint_url: str, operation: str) -> RateLimiter | None:
        """`endpoint_url` as `endpoint_url()` makes it: the same endpoint under any spelling of its API root."""
        rule = self._limits.get(operation)
        if rule is None:
            return None
        key = (endpoint_url, operation)
        limiter = self._limiters.get(key)
        if limiter is None:
            limit = max(1, int(rule.requests * self._headroom))
            limiter = self._limiters[key] = RateLimiter(limit, rule.per + self._slack, clock=self._clock)
        return limiter


class RunPodClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: Secret,
        endpoint_id: str,
        api_url: str = "https://api.runpod.ai/v2",
        retry: RetryPolicy | None = None,
        request_timeout: float = 20.0,
        sleep: Sleep = asyncio.sleep,
        limiters: RateLimiters | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        local: bool = False,
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        if not _ID.fullmatch(endpoint_id):
            raise RunPodRejected(f"{endpoint_id!r} is not a RunPod endpoint id.")
        self.endpoint_id = endpoint_id
        self._session = session
        self._api_key = api_key
        # RunPod's local test server (docs/runpod-api.md, Local test server): one worker at the root, status by
        # POST, the job run inside that request, a result read once, no /cancel and no /health.
        self.local = local
        self._base = api_url.rstrip("/") if local else endpoint_url(api_url, endpoint_id)
        # Clients are made per job: `bot.engine.RunPodContext` hands them one registry to share.
        self._limiters = RateLimiters() if limiters is None else limiters
        self._retry = retry or RetryPolicy()
        # Locally a job runs inside its /status request: only the caller's deadline bounds it.
        self._timeout = aiohttp.ClientTimeout(total=None if local else request_timeout)
        self._sleep = sleep
        self.max_answer_bytes = max_answer_bytes
        # Requests of this key in flight at once (`RunPodContext.client` shares one per key): each holds one of the
        # session's pooled connections, and one server must leave the others some.
        self._slots = slots

    @property
    def identity(self) -> tuple[str, str]:
        """Where it goes and with whose key (a digest, never the key): what two clients share answers by."""
        return self._base, hashlib.sha256(self._api_key.reveal().encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"RunPodClient(endpoint_id={self.endpoint_id!r})"

    @property
    def endpoint_url(self) -> str:
        return self._base

    async def run(
        self, job_input: dict[str, Any], *, policy: dict[str, Any] | None = None, webhook: str | None = None
    ) -> JobStatus:
        body: dict[str, Any] = {"input": job_input}
        if policy:
            body["policy"] = policy
        if webhook:
            body["webhook"] = webhook
        payload = orjson.dumps(body)
        if len(payload) > RUN_BODY_LIMIT:  # RunPod would answer 400: say why, and send nothing
            raise RunPodRejected(
                f"The job's request to RunPod would be {len(payload) / 2**20:.1f} MB, over the "
                f"{RUN_BODY_LIMIT // 2**20} MB RunPod takes; nothing was sent. Try a smaller picture to start from."
            )
        data = await self._request("POST", "run", body=payload, retry_ambiguous=False)
        return parse_status(data, "run")

    async def status(self, job_id: str, *, admit: Admit | None = None) -> JobStatus:
        # Locally a finished result is read once: a status request is never repeated on a doubt.
        data = await self._request(
            "POST" if self.local else "GET",
            f"status/{_job_path(job_id)}",
            job_id=job_id,
            admit=admit,
            retry_ambiguous=not self.local,
        )
        return parse_status(data, "status")

    async def cancel(self, job_id: str) -> JobStatus:
        if self.local:
            raise RunPodUnsupported("RunPod's local test server cannot cancel a job (it has no /cancel).")
        data = await self._request("POST", f"cancel/{_job_path(job_id)}", job_id=job_id)
        return parse_status(data, "cancel")

    async def health(self) -> Health:
        if self.local:
            raise RunPodUnsupported("RunPod's local test server reports no health (it has no /health).")
        data = await self._request("GET", "health")
        jobs, workers = data.get("jobs"), data.get("workers")
        if not isinstance(jobs, dict) or not isinstance(workers, dict):
            raise RunPodBadResponse("RunPod's /health answer lacks its jobs and workers counts.")
        return Health(
            in_queue=_count(jobs, "inQueue"),
            in_progress=_count(jobs, "inProgress"),
            completed=_count(jobs, "completed"),
            failed=_count(jobs, "failed"),
            idle=_count(workers, "idle"),
            running=_count(workers, "running"),
            initializing=_count(workers, "initializing"),
            ready=_count(workers, "ready"),
            throttled=_count(workers, "throttled"),
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        job_id: str | None = None,
        retry_ambiguous: bool = True,
        admit: Admit | None = None,
    ) -> dict[str, Any]:
        """One API call with retries. `retry_ambiguous=False` for calls that must not happen twice:
        those are retried only after a 429 or a failure to connect, when RunPod surely did nothing."""
        operation = path.split("/")[0]
        headers = {} if self.local else {"Authorization": f"Bearer {self._api_key.reveal()}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        limiter = self._limiters.get(self._base, operation)
        failure: RunPodError = RunPodUnavailable("RunPod could not be reached.")
        for attempt in range(self._retry.attempts):
            delay = self._retry.backoff(attempt)
            if limiter is not None:
                waited = await limiter.acquire(self._sleep)
                if waited > 1.0:
                    log.debug("RunPod %s on %s: held %.2fs by the rate limit", operation, self.endpoint_id, waited)
            try:
                async with (
                    self._slots or contextlib.nullcontext(),
                    self._session.request(
                        method, f"{self._base}/{path}", data=body, headers=headers, timeout=self._timeout
                    ) as response,
                ):
                    if response.status == 200:
                        if (response.content_length or 0) > self.max_answer_bytes:  # refused before any wait
                            raise RunPodAnswerTooLarge(operation, self.max_answer_bytes)
                        if admit is not None:
                            await admit(-1 if response.content_length is None else response.content_length)
                        return _parse_json(await self._read_capped(response, operation), operation)
                    payload = await _read_start(response)
                    if response.status == 429:
                        failure = RunPodRateLimited()
                        delay = _retry_after(response.headers.get("Retry-After"), self._retry) or delay
                    elif response.status >= 500:
                        failure = RunPodUnavailable(f"RunPod answered {response.status} to /{operation}.")
                        if not retry_ambiguous:
                            raise failure
                    else:
                        raise self._client_error(response.status, payload, operation, job_id)
            except aiohttp.ClientConnectorError:
                failure = RunPodUnavailable("RunPod could not be reached (connection failed).")
            except (aiohttp.ClientError, TimeoutError):
                failure = RunPodUnavailable(f"RunPod did not answer /{operation} (connection dropped or timed out).")
                if not retry_ambiguous:
                    raise failure from None
            log.debug(
                "RunPod %s on %s: retry %d in %.2fs (%s)", operation, self.endpoint_id, attempt + 1, delay, failure
            )
            if attempt + 1 < self._retry.attempts:
                await self._sleep(delay)
        raise failure

    async def _read_capped(self, response: aiohttp.ClientResponse, operation: str) -> bytearray:
        """The whole body, or `RunPodAnswerTooLarge` as soon as it exceeds `max_answer_bytes` (whatever its
        Content-Length said, and after decompression). Leaving the rest unread closes the connection, so RunPod
        stops sending it."""
        limit = self.max_answer_bytes
        body = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise RunPodAnswerTooLarge(operation, limit)
        return body

    def _client_error(self, status: int, payload: bytes, operation: str, job_id: str | None) -> RunPodError:
        if status == 401:
            return RunPodAuthError()
        if status == 404:
            if job_id is not None:
                return RunPodNotFound(f"RunPod no longer knows job {job_id} (404).")
            return RunPodNotFound(f"RunPod does not know endpoint {self.endpoint_id} (404): check the endpoint id.")
        detail = _error_text(payload)
        return RunPodRejected(f"RunPod refused /{operation} ({status}){': ' + detail if detail else ''}.")


def endpoint_url(api_url: str, endpoint_id: str) -> str:
    """An endpoint's API root: what identifies "the same endpoint" for rate limits and learned timings."""
    return f"{api_url.rstrip('/')}/{endpoint_id}"


def _job_path(job_id: str) -> str:
    if not _ID.fullmatch(job_id):
        raise RunPodRejected(f"{job_id[:80]!r} is not a RunPod job id.")
    return job_id


async def _read_start(response: aiohttp.ClientResponse) -> bytes:
    """The first bytes of an error answer, which is only ever quoted."""
    start = bytearray()
    while len(start) < _ERROR_BYTES:
        chunk = await response.content.read(_ERROR_BYTES - len(start))
        if not chunk:
            break
        start += chunk
    return bytes(start)


def _parse_json(payload: bytes | bytearray, operation: str) -> dict[str, Any]:
    try:
        data = safejson.loads(payload)
    except safejson.JSONRefused as refused:  # never a RecursionError, never a parse fifty times the text's size
        raise RunPodAnswerRefused(operation, f"{refused}, so it was refused") from None
    except ValueError:
        raise RunPodBadResponse(f"RunPod answered /{operation} with something that is not JSON.") from None
    if not isinstance(data, dict):
        raise RunPodBadResponse(f"RunPod answered /{operation} with JSON that is not an object.")
    return data


def parse_status(data: dict[str, Any], operation: str) -> JobStatus:
    """A job's status from RunPod's JSON answer to `operation`."""
    job_id, raw_state = data.get("id"), data.get("status")
    if raw_state == "RUNNING":  # documented but never sent (docs/runpod-api.md, Statuses): take it as meant
        raw_state = "IN_PROGRESS"
    if not isinstance(job_id, str) or not job_id or raw_state not in JobState.__members__:
        raise RunPodBadResponse(f"RunPod's /{operation} answer has no valid job id and status.")
    output = data.get("output", _MISSING)
    return JobStatus(
        id=job_id,
        state=JobState(str(raw_state)),
        delay_ms=_optional_int(data.get("delayTime")),
        execution_ms=_optional_int(data.get("executionTime")),
        worker_id=data.get("workerId") if isinstance(data.get("workerId"), str) else None,
        output=None if output is _MISSING else output,
        has_output=output is not _MISSING,
        error=data.get("error"),
    )


def _optional_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _count(section: dict[str, Any], key: str) -> int:
    return _optional_int(section.get(key)) or 0


def _retry_after(value: str | None, policy: RetryPolicy) -> float | None:
    """Honour a numeric Retry-After, with jitter so that clients told the same number still spread out."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    if seconds is None or seconds < 0:
        return None
    seconds = min(seconds, policy.max_retry_after)
    return seconds + random.uniform(0, min(1.0, seconds / 2 + 0.1))


def _error_text(payload: bytes) -> str:
    text = payload.decode("utf-8", "replace").strip()
    return text[:200]
