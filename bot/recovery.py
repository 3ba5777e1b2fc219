"""After a restart, and now and then while running: the jobs the ledger holds that nobody here follows.

`resume_all` hands every undelivered job of this process's shards back to the runner (followed on, delivered, or
its end told again); `sweep` cancels on RunPod the jobs past their guild's maximum wall time that nobody
follows, so they stop billing. A ledger row that cannot be read is skipped with one warning naming its id
(`Storage.skip_unreadable`); every other job goes on.
"""

from __future__ import annotations

import asyncio
import logging

from bot.config import Secret, Settings
from bot.crypto import UndecryptableSecret, Vault
from bot.endpoints import Endpoint, Endpoints
from bot.errors import BotError, JobTimedOut
from bot.jobs import ENDED_BY, JobRunner, LiveJob
from bot.lifecycle import LedgerState
from bot.params import GenerationParams
from bot.presets import PRESETS
from bot.storage import JobRecord, Storage

log = logging.getLogger(__name__)

# How a job that ended before a restart, but was not yet told, is told again: its stored words, under its title.
_TOLD_AS: dict[LedgerState, type[BotError]] = {state: kind for kind, state in ENDED_BY.items()} | {
    LedgerState.FAILED: BotError
}


class Recovery:
    def __init__(
        self, runner: JobRunner, settings: Settings, storage: Storage, vault: Vault, endpoints: Endpoints
    ) -> None:
        self._runner = runner
        self._settings = settings
        self._storage = storage
        self._vault = vault
        self._endpoints = endpoints

    async def resume_all(self) -> None:
        """Pick up every job an earlier run left undelivered: follow it, deliver it, or explain."""
        records = [job for job in await self._storage.undelivered_jobs() if self._settings.owns_guild(job.guild_id)]
        if records:
            log.info("resuming %d undelivered job(s)", len(records))
        for record in records:
            try:
                await self.resume(record)
            except Exception:
                log.exception("job %s (request %s): could not be resumed", record.runpod_job_id, record.request_id)

    async def resume(self, record: JobRecord) -> None:
        if record.request_id in self._runner.live or (params := self._params(record)) is None:
            return
        policy = await self._endpoints.policy(record.guild_id)
        token = _readable_token(self._vault, record)
        try:
            endpoint = await self._endpoints.of_record(record)
        except BotError as error:
            placeholder = Endpoint(Secret(""), record.endpoint_id, PRESETS[record.worker], source=record.key_source)
            await self._runner.end(self._runner.adopt(record, params, placeholder, policy, token), error)
            return
        job = self._runner.adopt(record, params, endpoint, policy, token)
        if record.state in _TOLD_AS:  # it ended before the restart, which came before the member was told
            told = _TOLD_AS[record.state](record.notice or "This job ended while the bot restarted.")
            told.advice = ""  # the stored notice says it already
            await self._runner.end(job, told)
        elif record.runpod_job_id is None and record.state is not LedgerState.WAITING:
            # Killed between "pending" and RunPod's answer: RunPod may or may not have the job.
            unsure = BotError("The bot restarted while sending this job to RunPod, so it may not have started.")
            unsure.advice = "Run /imagine again."
            await self._runner.end(job, unsure)
        else:
            self._runner.follow(job)

    async def sweep(self) -> None:
        """Cancel, on RunPod, jobs past their guild's maximum wall time that nobody is following
        (their follower died, or resuming them failed), so they stop billing; tell the requester."""
        for record in await self._storage.undelivered_jobs():
            if record.request_id in self._runner.live or not record.runpod_job_ids or record.created_at is None:
                continue
            if not record.state.on_runpod or not self._settings.owns_guild(record.guild_id):
                continue  # finished on RunPod (resuming delivers it), or another process's shards' job
            try:
                await self._sweep_one(record)
            except Exception:  # one job's trouble must not stop the sweep of the others
                log.exception("job %s: the sweeper failed on it", record.runpod_job_id)

    async def _sweep_one(self, record: JobRecord) -> None:
        policy = await self._endpoints.policy(record.guild_id)
        assert record.created_at is not None
        if (self._runner.options.clock() - record.created_at).total_seconds() < policy.max_wall_seconds:
            return
        if (params := self._params(record)) is None:
            return
        runpod_job_id = record.runpod_job_ids[0]
        try:
            endpoint = await self._endpoints.of_record(record)
        except BotError as error:
            log.warning("job %s: sweeper could not cancel it: %s", runpod_job_id, error)
            return
        context = f"job {runpod_job_id} guild {record.guild_id}"
        if await self._runner.sender.cancel_parts(endpoint, record.runpod_job_ids, context):
            return  # RunPod refused: tried again at the next sweep
        minutes = policy.max_wall_seconds / 60
        stale = JobTimedOut(
            f"Still unfinished after {minutes:g} minutes, so it was cancelled on RunPod to stop the billing.",
            runpod_job_id,
        )
        log.info("job %s: swept after %g minutes", runpod_job_id, minutes)
        job: LiveJob = self._runner.adopt(record, params, endpoint, policy, _readable_token(self._vault, record))
        await self._runner.end(job, stale)

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._runner.options.sweep_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("the stale-job sweeper failed; it will try again")

    def _params(self, record: JobRecord) -> GenerationParams | None:
        """The job's parameters, or None (and one warning) when its row holds some this code cannot read."""
        try:
            if record.worker not in PRESETS:
                raise ValueError(f"unknown worker {record.worker!r}")
            return GenerationParams(**record.params)
        except (TypeError, ValueError, BotError) as error:
            self._storage.skip_unreadable(record.request_id, str(error)[:200])
            return None


def _readable_token(vault: Vault, record: JobRecord) -> str | None:
    """The interaction's token, or None when it cannot be read (after a change of BOT_ENCRYPTION_KEY): the
    job then goes on, and its status continues in a channel message sent with the bot token."""
    if not record.token_encrypted:
        return None
    try:
        return vault.decrypt(record.token_encrypted).reveal()
    except UndecryptableSecret:
        log.warning("request %s: its interaction token cannot be decrypted; using the channel", record.request_id)
        return None
