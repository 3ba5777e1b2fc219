"""A hundred jobs through a network that fails one request in ten, at both edges, across a restart.

Sets, upscales, cancels and worker failures among them; the Discord and RunPod doubles reset connections and
answer 500/502/503 at a seeded rate (doubles/faults.py). Whatever happens, every picture RunPod made (and
billed) is posted exactly once or recorded as undeliverable, every other job ends in an honest final state,
the usage counters equal a rebuild from the ledger, and a status that failed to draw is drawn again soon.
`FAULT_SWEEP_JOBS` sets the size (default 100); the figures are printed (`pytest -s`) for the team's notes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from datetime import timedelta

import sqlalchemy as sa

from bot.lifecycle import LedgerState
from bot.live import STATUS_EDIT_TIMEOUT
from bot.runpod import RetryPolicy
from doubles import outputs
from doubles.discord import DEFAULT_GUILD_ID, DEFAULT_USER_ID, DiscordDouble, UserSpec
from doubles.faults import Chaos
from doubles.harness import button, fast_options, png_for, running_bot
from doubles.runpod import Script

JOBS = int(os.environ.get("FAULT_SWEEP_JOBS", "100"))
RATE = 0.1
# The counters, less the rows that count nothing (a member whose every job failed keeps a row of zeros).
COUNTED = sa.text("SELECT * FROM usage_days WHERE pictures != 0 OR gpu_ms != 0")
FINAL = {"✅ Done", "⚠️ No picture this time", "🚫 Cancelled"}
STATUS_REFRESH = 1.0
# A status edit that failed is followed by another look within the refresh and one more try (a status edit
# waits at most STATUS_EDIT_TIMEOUT, discord.py's own retries of a 5xx included), and a second of slack.
SILENT_AT_MOST = timedelta(seconds=STATUS_REFRESH + STATUS_EDIT_TIMEOUT + 1)


def worker(job_input) -> Script:
    """Each prompt's kind decides its fate; each picture is its own (prompt, seed, index), so it can be traced."""
    prompt, seed = str(job_input.get("prompt")), job_input.get("seed")
    if "image_url" in job_input:  # an upscale: not the picture it starts from
        prompt = f"upscaled {prompt}"
    count = job_input.get("num_images") or 1
    pngs = [png_for(f"{prompt}|{seed}|{n}") for n in range(count)]
    if prompt.startswith("fails"):
        return Script(queue_s=0.05, run_s=0.1, outcome="FAILED", error="CUDA out of memory")
    if prompt.startswith("cancel"):
        return Script(queue_s=4.0, run_s=0.5, output=outputs.sdxl(*pngs))
    run_s = 0.05 + (hash(prompt) % 5) / 10
    return Script(queue_s=0.05, run_s=run_s, progress=[(run_s / 2, "5/10")], output=outputs.sdxl(*pngs))


def member(n: int) -> UserSpec:
    return UserSpec(id=DEFAULT_USER_ID + 1 + n % 10, username=f"member{n % 10}", global_name=f"Member {n % 10}")


def plan(jobs: int) -> list[tuple[str, dict]]:
    """(prompt, options) for every /imagine: mostly singles, with sets of 4, failures and jobs to cancel."""
    kinds = ["single"] * 6 + ["set", "fails", "cancel", "single"]
    chosen = []
    for n in range(jobs):
        kind = kinds[n % len(kinds)]
        chosen.append((f"{kind} {n}", {"count": 4} if kind == "set" else {}))
    return chosen


def title(harness, interaction) -> str | None:
    with contextlib.suppress(IndexError, AttributeError):
        return harness.title(interaction)
    return None


async def click_when_shown(harness, interaction, action: str, user: UserSpec) -> None:
    """Click `action` on the job's message once it offers it (a few tries: the message may be edited meanwhile)."""
    for _ in range(50):
        message = harness.shown(interaction)
        with contextlib.suppress(AssertionError, AttributeError):
            click = harness.discord.click(button(message, action), message_id=message.id, user=user)
            await harness.discord.send(click)
            harness.sent.append(click)
            return
        await asyncio.sleep(0.1)


def trail(discord, record) -> str:
    """What the double saw of a job's message: for a failure's report."""
    shown = discord.messages.get(record.message_id or 0)
    lines = [
        f"{record.request_id} {record.state} {record.params['prompt']}: message {record.message_id} "
        f"{shown and shown.embeds and shown.embeds[0].get('title')} {shown and [a.filename for a in shown.attachments]}"
    ]
    for call in discord.calls:
        if call.message_id == record.message_id or (call.json and str(record.request_id) in str(call.json)[:2000]):
            title = (call.json or {}).get("embeds", [{}])[0].get("title") if isinstance(call.json, dict) else None
            lines.append(f"  {call.at:.2f} {call.route} {call.status} {call.chaos} files={len(call.files)} {title}")
    return "\n".join(lines)


async def settled(harness, timeout: float = 120) -> None:
    """Wait until no job is followed and every job's end is told, twice in a row a second apart (a click may still
    be on its way to becoming a job)."""
    calm = 0
    for _ in range(int(timeout)):
        untold = await harness.bot.storage.undelivered_jobs()
        calm = calm + 1 if harness.bot.runner.live == {} and not untold else 0
        if calm == 2:
            return
        await asyncio.sleep(1)
    live = [(job.context, job.record.state) for job in harness.bot.runner.live.values()]
    raise AssertionError(f"not settled in {timeout} s: live {live}, untold {untold}")


async def run_phase(harness, requests: list[tuple[str, dict]], upscales: int) -> list:
    sent = []
    for n, (prompt, options) in enumerate(requests):
        sent.append((await harness.imagine(prompt, user=member(n), **options), member(n), prompt))
        await asyncio.sleep(0.02)
    cancels = [(i, user) for i, user, prompt in sent if prompt.startswith("cancel")]
    await asyncio.gather(*(click_when_shown(harness, i, "cancel", user) for i, user in cancels))
    for interaction, user, _ in [job for job in sent if job[2].startswith("single")][:upscales]:
        with contextlib.suppress(TimeoutError):
            await harness.discord.wait_for(lambda i=interaction: title(harness, i) in FINAL, 20)
        if title(harness, interaction) == "✅ Done":
            await click_when_shown(harness, interaction, "upscale", user)
    return [interaction for interaction, _, _ in sent]


async def test_every_paid_picture_is_posted_once_or_recorded_honestly_under_ten_percent_faults(runpod, tmp_path):
    url = f"sqlite:///{tmp_path}/bot.db"
    discord_chaos, runpod_chaos = Chaos(RATE, seed=2026), Chaos(RATE, seed=1205)
    options = fast_options(
        delivery_retries=(0.2, 0.5, 1.0, 2.0), status_refresh=STATUS_REFRESH, poll=fast_options().poll
    )
    retry = RetryPolicy(attempts=5, base_delay=0.05, max_delay=0.4)
    requests = plan(JOBS)
    half = len(requests) // 2
    async with DiscordDouble() as discord:
        bot = {"database_url": url, "discord_double": discord, "options": options, "retry": retry, "worker": worker}
        async with running_bot(runpod, **bot) as h:
            await h.bot.storage.save_guild_policy(
                DEFAULT_GUILD_ID, {"member_concurrent": 20, "guild_concurrent": 200, "member_waiting": 100}
            )
            discord.chaos, runpod.chaos = discord_chaos, runpod_chaos
            first = await run_phase(h, requests[:half], upscales=JOBS // 20)
        # The restart: every job still running is told so, and the next run takes them up.
        async with running_bot(runpod, **bot) as h:
            second = await run_phase(h, requests[half:], upscales=JOBS // 20)
            storage = h.bot.storage
            await settled(h)
            discord.chaos = runpod.chaos = None  # the figures below are read without faults

            records = {
                record.request_id: record
                for record in await storage.guild_jobs_since(DEFAULT_GUILD_ID, h.bot.now() - timedelta(days=1))
            }
            untold = [(r.request_id, r.state, r.params["prompt"]) for r in await storage.undelivered_jobs()]
            assert untold == []  # every job's end was told (or recorded as untellable)

            # Every picture RunPod made is posted once, on its own job's message, or recorded as undeliverable.
            owner = {job_id: record for record in records.values() for job_id in record.runpod_job_ids}
            posted = Counter(
                attachment.data
                for message in discord.messages.values()
                if not message.deleted
                for attachment in message.attachments
                if not attachment.filename.startswith("start.")  # what an Upscale starts from, not a result
            )
            duplicates = sum(n - 1 for n in posted.values() if n > 1)
            twice = [
                (message.id, message.interaction_token, message.embeds[0].get("title") if message.embeds else None)
                for message in discord.messages.values()
                if not message.deleted and any(posted[a.data] > 1 for a in message.attachments)
            ]
            assert duplicates == 0, twice
            made = 0
            for job in runpod.jobs.values():
                if job.status(runpod.clock()) != "COMPLETED":
                    continue
                record = owner[job.id]
                made += 1
                assert record.state in (LedgerState.DELIVERED, LedgerState.UNDELIVERABLE), (record, job.input)
                if record.state is LedgerState.DELIVERED:
                    pngs = [
                        png_for(f"{job.input['prompt']}|{job.input['seed']}|{n}")
                        for n in range(job.input.get("num_images", 1))
                    ]
                    assert [posted[png] for png in pngs] == [1] * len(pngs), trail(discord, record)
            # No job is left half-way, and none that failed or was cancelled holds a picture RunPod made.
            assert {record.state for record in records.values()} <= {state for state in LedgerState if state.final}

            # The counters the quotas read equal a rebuild from the ledger.
            async with storage.engine.connect() as connection:
                kept = sorted(map(tuple, await connection.execute(COUNTED)))
            await storage.rebuild_usage()
            async with storage.engine.connect() as connection:
                rebuilt = sorted(map(tuple, await connection.execute(COUNTED)))
            assert kept == rebuilt

            # A status edit that failed is followed soon by another look at the same message.
            silent = []
            for interaction in [*first, *second, *h.sent]:
                edits = [c for c in h.edits(interaction)]
                for n, call in enumerate(edits):
                    if call.chaos is None or call.files:
                        continue
                    after = [later for later in edits[n + 1 :] if later.chaos is None]
                    if not after or (after[0].at - call.at) > SILENT_AT_MOST.total_seconds():
                        silent.append((interaction.id, call.at, after[0].at if after else None))
            assert silent == []

            states = Counter(str(record.state) for record in records.values())
            why = Counter((r.notice or "")[:60] for r in records.values() if r.state is LedgerState.FAILED)
            print(
                f"\nfault sweep: {len(records)} jobs ({dict(states)}), "
                f"Discord {discord_chaos.summary()}; RunPod {runpod_chaos.summary()}; "
                f"pictures made {made} RunPod jobs, posted {sum(posted.values())}, duplicates {duplicates}, "
                f"counter drift {0 if kept == rebuilt else 'yes'}; failed because: {dict(why)}"
            )
