"""Tests proving the RunPod test double behaves as docs/runpod-api.md says (What a test double must reproduce)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from doubles.faults import Chaos
from doubles.runpod import RunPodDouble, Script

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def rp(clock: FakeClock) -> AsyncIterator[RunPodDouble]:
    async with RunPodDouble(clock=clock) as double:
        yield double


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def call(http: aiohttp.ClientSession, rp: RunPodDouble, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, f"{rp.api_url}/test-endpoint/{path}", **kw) as resp:
        text = await resp.text()
        if resp.content_type == "application/json":
            return resp.status, json.loads(text)
        return resp.status, text


async def submit(http: aiohttp.ClientSession, rp: RunPodDouble, **body: Any) -> str:
    status, data = await call(http, rp, "POST", "run", json={"input": {"prompt": "a cat"}, **body})
    assert status == 200
    assert data["status"] == "IN_QUEUE"
    return data["id"]


async def test_auth_missing_or_wrong_key_is_401_with_empty_text_body(rp: RunPodDouble) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}):
        async with (
            aiohttp.ClientSession(headers=headers) as s,
            s.post(f"{rp.api_url}/test-endpoint/run", json={"input": {}}) as resp,
        ):
            assert resp.status == 401
            assert resp.content_type == "text/plain"
            assert await resp.read() == b""
    # The raw key without "Bearer" is accepted too; every request was recorded.
    async with (
        aiohttp.ClientSession(headers={"Authorization": KEY}) as s,
        s.post(f"{rp.api_url}/test-endpoint/run", json={"input": {}}) as resp,
    ):
        assert resp.status == 200
    assert [r.op for r in rp.requests] == ["run", "run", "run"]
    assert rp.requests[1].headers["Authorization"] == "Bearer nope"


async def test_validation_and_unknown_endpoint_and_foreign_key(rp: RunPodDouble, http: aiohttp.ClientSession) -> None:
    assert (await call(http, rp, "POST", "run", data=b"not json"))[0] == 400
    status, data = await call(http, rp, "POST", "run", json={"input": "x"})
    assert (status, set(data)) == (400, {"error"})
    big = {"input": {"blob": "x" * (10 * 1024 * 1024)}}
    assert (await call(http, rp, "POST", "run", json=big))[0] == 400
    async with http.get(f"{rp.api_url}/nope/health") as resp:
        assert (resp.status, await resp.json()) == (404, {"error": "endpoint not found"})
    job_id = await submit(http, rp)
    rp.api_keys.add("other-key")
    status, _ = await call(http, rp, "GET", f"status/{job_id}", headers={"Authorization": "Bearer other-key"})
    assert status == 404
    assert (await call(http, rp, "GET", "status/unknown-id"))[0] == 404


async def test_lifecycle_queue_progress_completed(
    rp: RunPodDouble, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    output = {"images": ["data:image/png;base64,iVBORw0KGgo="], "seed": 42}
    rp.script_next(Script(queue_s=30, run_s=10, output=output, progress=[(2, "step 1"), (5, {"p": "4/10"})]))
    job_id = await submit(http, rp)
    assert job_id.endswith("-u1")
    assert await call(http, rp, "GET", f"status/{job_id}") == (200, {"id": job_id, "status": "IN_QUEUE"})
    clock.advance(31)
    _, body = await call(http, rp, "GET", f"status/{job_id}")
    assert body == {"delayTime": 30000, "id": job_id, "status": "IN_PROGRESS", "workerId": "462u6mrq9s28h6"}
    clock.advance(2)
    _, body = await call(http, rp, "POST", f"status/{job_id}")  # POST works like GET
    assert (body["output"], body["executionTime"]) == ("step 1", 3000)
    clock.advance(3)
    assert (await call(http, rp, "GET", f"status/{job_id}"))[1]["output"] == {"p": "4/10"}
    clock.advance(5)
    status, body = await call(http, rp, "GET", f"status/{job_id}")
    assert status == 200
    assert body == {
        "delayTime": 30000,
        "executionTime": 10000,
        "id": job_id,
        "output": output,
        "status": "COMPLETED",
        "workerId": "462u6mrq9s28h6",
    }
    assert len(rp.requests_for("status", job_id)) == 5
    assert rp.requests_for("run")[0].job_id == job_id


async def test_failed_timed_out_and_no_output(rp: RunPodDouble, http: aiohttp.ClientSession, clock: FakeClock) -> None:
    err = json.dumps({"error_type": "<class 'ValueError'>", "error_message": "bad"})
    rp.script_next(
        Script(run_s=1, outcome="FAILED", error=err, output={"details": ["x"]}),
        Script(run_s=60),
        Script(run_s=1),
    )
    failed = await submit(http, rp)
    slow = await submit(http, rp, policy={"executionTimeout": 5000})
    empty = await submit(http, rp)
    clock.advance(10)
    body = (await call(http, rp, "GET", f"status/{failed}"))[1]
    assert (body["status"], body["error"], body["output"]) == ("FAILED", err, {"details": ["x"]})
    body = (await call(http, rp, "GET", f"status/{slow}"))[1]
    assert (body["status"], body["executionTime"]) == ("TIMED_OUT", 5000)
    body = (await call(http, rp, "GET", f"status/{empty}"))[1]
    assert body["status"] == "COMPLETED"
    assert "output" not in body
    # Retry re-runs the same script; swapping it after the retry makes the re-run succeed.
    assert await call(http, rp, "POST", f"retry/{failed}") == (200, {"id": failed, "status": "IN_QUEUE"})
    rp.jobs[failed].script = Script(run_s=1, output="ok")
    body = (await call(http, rp, "GET", f"status/{failed}"))[1]
    assert (body["status"], "output" in body, "error" in body) == ("IN_PROGRESS", False, False)
    clock.advance(2)
    assert (await call(http, rp, "GET", f"status/{failed}"))[1]["output"] == "ok"
    assert (await call(http, rp, "POST", f"retry/{failed}"))[0] == 400


async def test_cancel_purge_and_ttl(rp: RunPodDouble, http: aiohttp.ClientSession, clock: FakeClock) -> None:
    rp.default_script = Script(queue_s=100, run_s=1)
    job_id = await submit(http, rp)
    assert await call(http, rp, "POST", f"cancel/{job_id}") == (200, {"id": job_id, "status": "CANCELLED"})
    clock.advance(200)
    assert (await call(http, rp, "GET", f"status/{job_id}"))[1] == {"id": job_id, "status": "CANCELLED"}
    done = await submit(http, rp)
    clock.advance(101)
    assert await call(http, rp, "POST", f"cancel/{done}") == (200, {"id": done, "status": "COMPLETED"})
    queued = [await submit(http, rp) for _ in range(2)]
    assert await call(http, rp, "POST", "purge-queue") == (200, {"removed": 2, "status": "completed"})
    assert (await call(http, rp, "GET", f"status/{queued[0]}"))[0] == 404
    short = await submit(http, rp, policy={"ttl": 10_000})
    clock.advance(10)
    assert (await call(http, rp, "GET", f"status/{short}"))[0] == 404


async def test_retention_expiry(rp: RunPodDouble, http: aiohttp.ClientSession, clock: FakeClock) -> None:
    rp.script_next(Script(run_s=5, output=1), Script(output=2))
    job_id = await submit(http, rp)
    other = await submit(http, rp)
    clock.advance(5 + 30 * 60 - 1)
    assert (await call(http, rp, "GET", f"status/{job_id}"))[1]["status"] == "COMPLETED"
    rp.expire(other)
    assert await call(http, rp, "GET", f"status/{other}") == (404, {"error": "job not found"})
    clock.advance(1)
    assert await call(http, rp, "GET", f"status/{job_id}") == (404, {"error": "job not found"})
    assert (await call(http, rp, "POST", f"cancel/{job_id}"))[0] == 404


async def test_rate_limit_429(rp: RunPodDouble, http: aiohttp.ClientSession, clock: FakeClock) -> None:
    rp.set_rate_limit("health", 2, 10)
    codes = [(await call(http, rp, "GET", "health"))[0] for _ in range(3)]
    assert codes == [200, 200, 429]
    async with http.get(f"{rp.api_url}/test-endpoint/health") as resp:
        assert (resp.status, resp.content_type, await resp.read()) == (429, "text/plain", b"")
        assert "Retry-After" not in resp.headers
    clock.advance(10)
    assert (await call(http, rp, "GET", "health"))[0] == 200


async def test_fail_next_drop_next_delay_next(rp: RunPodDouble, http: aiohttp.ClientSession) -> None:
    rp.fail_next("run", 429, headers={"Retry-After": "3"})
    rp.fail_next("run", 200, body=b"<html>oops</html>", content_type="text/html")
    async with http.post(f"{rp.api_url}/test-endpoint/run", json={"input": {}}) as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (429, "3")
    assert await call(http, rp, "POST", "run", json={"input": {}}) == (200, "<html>oops</html>")
    assert not rp.jobs  # injected failures pre-empt normal handling
    rp.drop_next("run")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, rp, "POST", "run", json={"input": {}})
    # aiohttp retries an idempotent GET once on a dropped connection, so drop twice to make it fail.
    rp.drop_next("status", count=2)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, rp, "GET", "status/whatever")
    rp.delay_next("health", 5)
    with pytest.raises(asyncio.TimeoutError):
        await call(http, rp, "GET", "health", timeout=aiohttp.ClientTimeout(total=0.1))
    assert (await call(http, rp, "GET", "health"))[0] == 200
    assert len(rp.requests_for("health")) == 2


async def test_runsync(rp: RunPodDouble, http: aiohttp.ClientSession, clock: FakeClock) -> None:
    rp.script_next(Script(output={"image_url": "https://x/y.png"}), Script(queue_s=5, run_s=5))
    status, body = await call(http, rp, "POST", "runsync", json={"input": {}})
    assert status == 200
    assert body["id"].startswith("sync-")
    assert body["id"].endswith("-u1")
    assert (body["status"], body["output"], body["delayTime"]) == ("COMPLETED", {"image_url": "https://x/y.png"}, 0)

    async def tick() -> None:  # the double waits on its own clock, so moving it ends the wait
        await asyncio.sleep(0.05)
        clock.advance(6)

    ticker = asyncio.create_task(tick())
    status, body = await call(http, rp, "POST", "runsync?wait=1000", json={"input": {}})
    await ticker
    assert (status, body["status"], set(body)) == (200, "IN_PROGRESS", {"id", "status"})
    clock.advance(4 + 59)  # runsync results are kept for one minute only
    assert (await call(http, rp, "GET", f"status/{body['id']}"))[1]["status"] == "COMPLETED"
    clock.advance(1)
    assert (await call(http, rp, "GET", f"status/{body['id']}"))[0] == 404


async def test_health_counts(rp: RunPodDouble, http: aiohttp.ClientSession, clock: FakeClock) -> None:
    rp.script_next(Script(), Script(run_s=1, outcome="FAILED", error="boom"), Script(run_s=100), Script(queue_s=100))
    for _ in range(4):
        await submit(http, rp)
    clock.advance(2)
    status, body = await call(http, rp, "GET", "health")
    assert status == 200
    assert body["jobs"] == {"completed": 1, "failed": 1, "inProgress": 1, "inQueue": 1, "retried": 0}
    assert body["workers"] == {"idle": 0, "initializing": 0, "ready": 0, "running": 1, "throttled": 0}
    rp.health_workers = {"idle": 3, "running": 0}
    assert (await call(http, rp, "GET", "health"))[1]["workers"] == {"idle": 3, "running": 0}


# --- chaos: seeded random faults ------------------------------------------------------------------------

RESET_ERRORS = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)


async def test_chaos_reset_closes_the_connection_and_creates_no_job(
    rp: RunPodDouble, http: aiohttp.ClientSession
) -> None:
    rp.chaos = Chaos(rate=1.0, kinds=("reset",))
    with pytest.raises(RESET_ERRORS):
        await call(http, rp, "POST", "run", json={"input": {"prompt": "a cat"}})
    assert not rp.jobs
    (rec,) = rp.requests
    assert (rec.op, rec.chaos, rec.job_id) == ("run", "reset", None)
    assert rp.chaos.injected == {("run", "reset"): 1}
    rp.chaos = None  # off again: the next request is answered
    await submit(http, rp)
    assert len(rp.jobs) == 1
    assert rp.requests[-1].chaos is None


async def test_chaos_503_is_the_gateways_text_and_has_no_effect(rp: RunPodDouble, http: aiohttp.ClientSession) -> None:
    rp.set_rate_limit("run", 1, 10)
    rp.chaos = Chaos(rate=1.0, kinds=("503",))
    for _ in range(2):
        async with http.post(f"{rp.api_url}/test-endpoint/run", json={"input": {}}) as resp:
            assert (resp.status, resp.content_type) == (503, "text/plain")
            assert (await resp.text()).startswith("upstream connect error")
    assert not rp.jobs
    assert [r.chaos for r in rp.requests] == ["503", "503"]
    rp.chaos = None
    await submit(http, rp)  # the faulted requests used none of the rate limit's one request
    assert rp.chaos is None


async def test_chaos_is_deterministic_per_seed_and_one_shots_come_first(http: aiohttp.ClientSession) -> None:
    async def run_once(seed: int) -> list[int | str]:
        async with RunPodDouble(chaos=Chaos(rate=0.5, seed=seed, kinds=("500", "502", "503"))) as double:
            double.fail_next("health", 418)  # a one-shot injection answers first and draws nothing
            seen: list[int | str] = []
            for _ in range(20):
                seen.append((await call(http, double, "GET", "health"))[0])
            assert double.chaos is not None
            assert sum(n for (op, _), n in double.chaos.injected.items() if op == "health") == double.chaos.total
            assert double.chaos.total == sum(s != 200 for s in seen[1:])
            assert [r.chaos for r in double.requests] == [None if s in (200, 418) else str(s) for s in seen]
            return seen

    first = await run_once(7)
    assert first[0] == 418
    assert 200 in first[1:]
    assert any(s != 200 for s in first[1:])
    assert await run_once(7) == first
    assert await run_once(8) != first


async def test_chaos_routes_restrict_where_faults_land(rp: RunPodDouble, http: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="unknown op"):
        rp.chaos = Chaos(rate=1.0, routes=frozenset({"stauts"}))
    rp.chaos = Chaos(rate=1.0, kinds=("502",), routes=frozenset({"status"}))
    job_id = await submit(http, rp)  # /run is not covered
    for _ in range(3):
        assert (await call(http, rp, "GET", f"status/{job_id}"))[0] == 502
    assert (await call(http, rp, "GET", "health"))[0] == 200
    assert rp.chaos.injected == {("status", "502"): 3}
    assert rp.chaos.summary() == "3 faults: status 502 x3"
