"""The RunPod client against the double: each API behaviour and each failure it can return."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from benchmarks.report import peak_in_window
from bot.config import Secret
from bot.engine import RunPodContext
from bot.errors import (
    RunPodAnswerRefused,
    RunPodAnswerTooLarge,
    RunPodAuthError,
    RunPodBadResponse,
    RunPodNotFound,
    RunPodRateLimited,
    RunPodRejected,
    RunPodUnavailable,
)
from bot.ratelimit import RateLimit, RateLimiter
from bot.runpod import (
    JobState,
    RateLimiters,
    RetryPolicy,
    RunPodClient,
    endpoint_url,
)
from doubles import outputs
from doubles.runpod import Script
from tests.conftest import API_KEY, ENDPOINT, FAST_RETRY


def recording_client(runpod, session, delays, **kwargs):
    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    kwargs.setdefault("retry", FAST_RETRY)
    return RunPodClient(
        session, api_key=Secret(API_KEY), endpoint_id=ENDPOINT, api_url=runpod.api_url, sleep=sleep, **kwargs
    )


async def test_run_posts_the_input_with_a_bearer_key(client, runpod):
    status = await client.run({"prompt": "a lighthouse"}, policy={"executionTimeout": 60000})
    assert status.state is JobState.IN_QUEUE
    (request,) = runpod.requests_for("run")
    assert request.method == "POST"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.body == {"input": {"prompt": "a lighthouse"}, "policy": {"executionTimeout": 60000}}
    assert runpod.jobs[status.id].input == {"prompt": "a lighthouse"}


async def test_status_reports_timing_worker_and_output(client, runpod):
    runpod.script_next(Script(output={"images": ["x"]}))
    job = await client.run({"prompt": "x"})
    status = await client.status(job.id)
    assert status.state is JobState.COMPLETED
    assert status.worker_id == "462u6mrq9s28h6"
    assert status.delay_ms is not None and status.execution_ms is not None
    assert status.has_output and status.output == {"images": ["x"]}


async def test_completed_without_output_is_told_apart_from_null_output(client, runpod):
    runpod.script_next(Script())
    job = await client.run({"prompt": "x"})
    status = await client.status(job.id)
    assert status.state is JobState.COMPLETED and not status.has_output


async def test_cancel_and_health(client, runpod):
    runpod.script_next(Script(queue_s=60))
    job = await client.run({"prompt": "x"})
    health = await client.health()
    assert health.in_queue == 1
    assert (await client.cancel(job.id)).state is JobState.CANCELLED
    assert (await client.status(job.id)).state is JobState.CANCELLED
    runpod.health_workers = {"idle": 0, "running": 0, "initializing": 1, "ready": 0, "throttled": 2}
    health = await client.health()
    assert (health.initializing, health.throttled, health.warm_workers) == (1, 2, 0)


async def test_bad_key_is_a_clear_error_and_not_retried(runpod, session):
    client = RunPodClient(session, api_key=Secret("wrong"), endpoint_id=ENDPOINT, api_url=runpod.api_url)
    with pytest.raises(RunPodAuthError, match="401"):
        await client.run({"prompt": "x"})
    assert len(runpod.requests_for("run")) == 1


async def test_unknown_endpoint_and_unknown_job_are_told_apart(runpod, session, client):
    stranger = RunPodClient(session, api_key=Secret(API_KEY), endpoint_id="nope", api_url=runpod.api_url)
    with pytest.raises(RunPodNotFound, match="endpoint nope"):
        await stranger.health()
    with pytest.raises(RunPodNotFound, match="job 1234-u1"):
        await client.status("1234-u1")


async def test_job_ids_cannot_escape_the_path(client, runpod):
    for job_id in ("../health", "x/../../other", "a b", ""):
        with pytest.raises(RunPodRejected, match="not a RunPod job id"):
            await client.status(job_id)
    assert runpod.requests == []


def test_endpoint_ids_are_checked(session):
    with pytest.raises(RunPodRejected):
        RunPodClient(session, api_key=Secret("k"), endpoint_id="../x", api_url="https://api.runpod.ai/v2")


async def test_429_honours_retry_after_with_jitter(runpod, session):
    delays: list[float] = []
    client = recording_client(runpod, session, delays)
    runpod.fail_next("health", 429, count=2, headers={"Retry-After": "3"})
    await client.health()
    assert len(runpod.requests_for("health")) == 3
    assert len(delays) == 2 and all(3 <= delay <= 4 for delay in delays)


async def test_429_without_retry_after_backs_off_with_capped_jitter(runpod, session):
    delays: list[float] = []
    policy = RetryPolicy(attempts=6, base_delay=0.5, max_delay=4.0)
    client = recording_client(runpod, session, delays, retry=policy)
    runpod.fail_next("status", 429, count=10)
    with pytest.raises(RunPodRateLimited):
        await client.status("any")
    assert len(runpod.requests_for("status")) == 6
    assert len(delays) == 5
    assert all(0 <= delay <= min(4.0, 0.5 * 2**n) for n, delay in enumerate(delays))


async def test_a_429_burst_does_not_bring_clients_back_in_step(runpod, session):
    """Fifty clients refused at once must spread their retries, not return as one storm."""
    first_delays = []
    for _ in range(50):
        delays: list[float] = []
        client = recording_client(runpod, session, delays, retry=RetryPolicy(base_delay=1.0))
        runpod.fail_next("health", 429)
        await client.health()
        first_delays.append(delays[0])
    assert max(first_delays) - min(first_delays) > 0.6
    busiest_tenth_of_a_second = max(sum(1 for d in first_delays if n / 10 <= d < (n + 1) / 10) for n in range(10))
    assert busiest_tenth_of_a_second < 16  # 5 expected; a synchronized storm would put all 50 in one


async def test_run_is_retried_after_429_but_never_after_an_ambiguous_failure(runpod, client):
    runpod.fail_next("run", 429)
    await client.run({"prompt": "x"})
    assert len(runpod.requests_for("run")) == 2

    runpod.fail_next("run", 502)
    with pytest.raises(RunPodUnavailable, match="502"):
        await client.run({"prompt": "x"})
    runpod.drop_next("run")
    with pytest.raises(RunPodUnavailable, match="dropped"):
        await client.run({"prompt": "x"})
    assert len(runpod.requests_for("run")) == 4  # one each: RunPod may have taken them, so never pay twice


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_status_survives_transient_gateway_errors(client, runpod, status):
    job = await client.run({"prompt": "x"})
    runpod.fail_next("status", status, count=2)
    assert (await client.status(job.id)).id == job.id
    assert len(runpod.requests_for("status")) == 3


async def test_dropped_connections_and_timeouts_are_retried_for_reads(runpod, session):
    client = recording_client(runpod, session, [], request_timeout=0.3)
    job = await client.run({"prompt": "x"})
    runpod.drop_next("status", count=2)  # aiohttp itself retries an idempotent GET once
    runpod.delay_next("status", 1.0)
    assert (await client.status(job.id)).id == job.id


async def test_gateway_that_never_recovers_ends_as_unavailable(client, runpod):
    runpod.fail_next("health", 503, count=10)
    with pytest.raises(RunPodUnavailable, match="503"):
        await client.health()
    assert len(runpod.requests_for("health")) == FAST_RETRY.attempts


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html>Bad gateway</html>", "text/html"),
        (b"[1, 2]", "application/json"),
        (json.dumps({"id": "x", "status": "DANCING"}).encode(), "application/json"),
        (json.dumps({"status": "COMPLETED"}).encode(), "application/json"),
    ],
)
async def test_malformed_bodies_are_bad_responses(client, runpod, body, content_type):
    runpod.fail_next("status", 200, body=body, content_type=content_type)
    with pytest.raises(RunPodBadResponse):
        await client.status("x")


async def test_health_of_the_wrong_shape_is_a_bad_response(client, runpod):
    runpod.fail_next("health", 200, body=b'{"jobs": 3}', content_type="application/json")
    with pytest.raises(RunPodBadResponse, match="health"):
        await client.health()


async def test_400_is_a_rejection_with_runpods_words(client, runpod):
    runpod.fail_next("run", 400, body=b'{"error": "input must be an object"}', content_type="application/json")
    with pytest.raises(RunPodRejected, match="input must be an object"):
        await client.run({"prompt": "x"})


async def test_the_key_only_travels_in_the_authorization_header(client, runpod):
    job = await client.run({"prompt": "x"})
    await client.status(job.id)
    await client.health()
    for request in runpod.requests:
        visible = json.dumps(
            [
                request.path,
                request.query,
                request.body,
                {k: v for k, v in request.headers.items() if k != "Authorization"},
            ]
        )
        assert API_KEY not in visible
    assert API_KEY not in repr(client)


def counted(chunks):
    """The double's body, counting what it has been asked to send."""
    sent = [0]

    def body():
        for chunk in chunks():
            sent[0] += len(chunk)
            yield chunk

    return body, sent


async def test_an_answer_over_the_cap_is_refused_unread_and_never_asked_again(runpod, client):
    size = 830 * 1024 * 1024
    for announced in (None, size):  # streamed without a length, then announced by its Content-Length
        body, sent = counted(outputs.streamed_status(size))
        runpod.stream_next("status", body, length=announced)
        with pytest.raises(RunPodAnswerTooLarge, match=r"RunPod's answer to /status is over 64 MB, so it was not read"):
            await client.status("any-u1")
        await asyncio.sleep(0.2)  # let the double notice that nobody reads any more
        assert sent[0] < size / 10  # the rest was never sent, let alone held
    assert len(runpod.requests_for("status")) == 2  # never retried: asking again brings the same answer

    # The client goes on working, and the cap leaves room for ten pictures of 4.5 MB, 60 MB as base64.
    pictures = [random.Random(n).randbytes(4_500_000) for n in range(10)]
    runpod.script_next(Script(output=outputs.comfyui(*pictures)))
    job = await client.run({"prompt": "x"})
    status = await client.status(job.id)
    assert [image["data"] for image in status.output["images"]] == [outputs.b64(picture) for picture in pictures]


def nested(depth: int) -> bytes:
    return b'{"id": "deep-u1", "status": "COMPLETED", "output": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (nested(100), "nests deeper than 64 levels"),
        (nested(5000), "nests deeper than 64 levels"),  # past orjson's own limit, where the standard library recursed
        (b'{"id": "many-u1", "status": "COMPLETED", "output": [' + b"[]," * 200_000 + b"[]]}", "more than 100,000"),
    ],
    ids=["deep", "deeper-than-orjson-goes", "tiny-values"],
)
async def test_json_that_would_recurse_or_swell_is_refused_with_a_clear_error(client, runpod, body, reason):
    runpod.fail_next("status", 200, body=body, content_type="application/json")
    with pytest.raises(RunPodAnswerRefused, match=reason) as caught:
        await client.status("x-u1")
    assert isinstance(caught.value, RunPodBadResponse)
    assert len(runpod.requests_for("status")) == 1


async def test_json_nested_as_deep_as_a_worker_could_mean_it_is_read(client, runpod):
    runpod.fail_next("status", 200, body=nested(60), content_type="application/json")
    status = await client.status("deep-u1")
    assert status.state is JobState.COMPLETED and status.has_output


# --- the shared per-endpoint rate limiter -----------------------------------------------------------------


class FakeClock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def test_the_limiter_never_lets_a_window_hold_more_than_its_limit():
    clock = FakeClock()
    limiter = RateLimiter(10, 1.0, clock=clock)
    starts = []
    for step in range(200):  # 80 requests a second asked for, against 10 a second allowed
        clock.now = 100.0 + step * 0.0125
        starts.append(clock.now + limiter.reserve())
    assert starts == sorted(starts)  # first come, first served
    assert peak_in_window(starts, 1.0) == 10
    assert starts[10] == pytest.approx(starts[0] + 1.0)  # and no slower than it must
    assert starts[:10] == [100.0 + step * 0.0125 for step in range(10)]  # no wait while there is room


def test_the_limiter_grants_slots_again_once_the_window_has_passed():
    clock = FakeClock()
    limiter = RateLimiter(3, 10.0, clock=clock)
    assert [limiter.reserve() for _ in range(4)] == [0, 0, 0, 10.0]
    clock.now += 25
    assert limiter.reserve() == 0
    assert limiter.pending == 1


def test_one_limiter_per_endpoint_and_operation_whatever_the_client():
    limiters = RateLimiters()
    status = limiters.get(endpoint_url("https://api.runpod.ai/v2/", "ep1"), "status")
    assert status is limiters.get(endpoint_url("https://api.runpod.ai/v2", "ep1"), "status")
    assert status is not limiters.get(endpoint_url("https://api.runpod.ai/v2", "ep2"), "status")
    assert status is not limiters.get(endpoint_url("https://api.runpod.ai/v2", "ep1"), "cancel")
    assert limiters.get(endpoint_url("https://api.runpod.ai/v2", "ep1"), "webhook") is None
    # RunPod's documented 2000 /status per 10 s, kept 10 % below and in a window half a second longer.
    assert (status.limit, status.window) == (1800, 10.5)
    assert limiters.get(endpoint_url("https://api.runpod.ai/v2", "ep1"), "cancel").limit == 90


async def test_clients_of_one_context_share_its_limiters_and_no_others(context, session):
    first, second = context.client(Secret("k"), "ep"), context.client(Secret("other"), "ep")
    assert first._limiters is second._limiters is context.limiters
    elsewhere = RunPodContext(session, context.fetcher, api_url=context.api_url)
    assert elsewhere.client(Secret("k"), "ep")._limiters is not context.limiters


async def test_many_concurrent_jobs_never_exceed_the_endpoints_limit(runpod, session):
    """Sixty jobs polling at once through one small limit: RunPod never sees more than it allows."""
    runpod.set_rate_limit("status", 10, 0.2)
    limiters = RateLimiters({"status": RateLimit(10, 0.2)}, headroom=1.0, slack=0.1)
    jobs = []
    for _ in range(20):
        job = await RunPodClient(
            session, api_key=Secret(API_KEY), endpoint_id=ENDPOINT, api_url=runpod.api_url, limiters=limiters
        ).run({"prompt": "x"})
        jobs.append(job.id)

    async def poll(job_id):
        client = RunPodClient(
            session, api_key=Secret(API_KEY), endpoint_id=ENDPOINT, api_url=runpod.api_url, limiters=limiters
        )
        for _ in range(3):
            await client.status(job_id)

    await asyncio.gather(*(poll(job_id) for job_id in jobs))
    polls = runpod.requests_for("status")
    assert len(polls) == 60  # none was refused and retried
    assert peak_in_window([request.at for request in polls], 0.2) <= 10


async def test_a_429_burst_ends_without_a_synchronized_retry_storm(runpod, session):
    """Forty jobs polled at the same moment and all refused retry spread out, not in step; all get through."""
    runpod.script_next(*[Script(queue_s=60) for _ in range(40)])
    retry = RetryPolicy(attempts=8, base_delay=0.2, max_delay=1.0)
    retries: list[float] = []  # when each refused request was due to go out again

    async def sleep(seconds):
        # The moment the client chose, not the moment a busy machine woke it: the spread is the client's.
        retries.append(asyncio.get_running_loop().time() + seconds)
        await asyncio.sleep(seconds)

    client = RunPodClient(
        session, api_key=Secret(API_KEY), endpoint_id=ENDPOINT, api_url=runpod.api_url, retry=retry, sleep=sleep
    )
    jobs = [(await client.run({"prompt": "x"})).id for _ in range(40)]

    async def burst():
        runpod.set_rate_limit("status", 0, 1.0)  # every /status refused
        await asyncio.sleep(0.6)
        runpod.set_rate_limit("status", 100_000, 1.0)

    *statuses, _ = await asyncio.gather(*(client.status(job_id) for job_id in jobs), burst())
    assert [status.state for status in statuses] == [JobState.IN_QUEUE] * 40
    assert len(retries) >= 40
    # In step, all forty would retry in the same instant (40). With full jitter the busiest 20 ms hold 10 at the
    # median and 18 at most in 3,000 simulated bursts, but 15 or more in 1 % of them: the old bound of 15 flaked.
    assert peak_in_window(retries, 0.02) < 25


async def test_one_health_answer_is_shared_per_endpoint_and_key_never_across_keys(context, runpod):
    """Waiting jobs share /health; a guild with another key to the same endpoint never reads the first's answer."""
    ours, again = context.client(Secret(API_KEY), ENDPOINT), context.client(Secret(API_KEY), ENDPOINT)
    theirs = context.client(Secret("rp_someone_elses_key"), ENDPOINT)
    other_endpoint = context.client(Secret(API_KEY), "other-endpoint")
    first, second = await asyncio.gather(context.health(ours), context.health(again))
    assert first is not None
    assert first == second
    assert await context.health(theirs) is None  # the double refuses that key: its own request, its own answer
    assert await context.health(other_endpoint) is not None
    asked = sorted((request.endpoint_id, request.headers["Authorization"]) for request in runpod.requests_for("health"))
    assert asked == sorted(
        [
            (ENDPOINT, f"Bearer {API_KEY}"),
            (ENDPOINT, "Bearer rp_someone_elses_key"),
            ("other-endpoint", f"Bearer {API_KEY}"),
        ]
    )
