"""Where a guild's jobs run, and with whose key: the guild's own models, else the operator's default.

No Discord here. The admin commands (`cogs/admin.py`) connect, list and remove a guild's endpoints and
change its rules through `Endpoints`; the job runner (`bot/jobs.py`) asks it where a job runs. A guild's
key is only ever used for that guild's jobs, and only ever stored encrypted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from bot.config import Secret, Settings
from bot.crypto import Vault
from bot.engine import RunPodContext
from bot.errors import BotError, ConfigError
from bot.policy import GuildPolicy
from bot.presets import PRESETS, WorkerPreset, parse_workflow
from bot.runpod import Health, RunPodClient
from bot.storage import GuildEndpoint, JobRecord, KeySource, Storage

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"  # the name of a guild's endpoint when it has only one


class NotConfigured(BotError):
    def __init__(self) -> None:
        super().__init__("No RunPod endpoint is set up for this server.")

    advice = "A server admin must run /runpod setup first."


@dataclass(frozen=True)
class Endpoint:
    """Where a guild's jobs run, and with whose key."""

    api_key: Secret = field(repr=False)
    endpoint_id: str
    preset: WorkerPreset
    workflow: Any = None
    source: KeySource = KeySource.DEFAULT
    model: str | None = None  # the guild's name for it

    @property
    def takes_images(self) -> bool:
        """Whether its worker (and workflow template) can start from a picture: Vary, Upscale, image prompts."""
        return self.preset.takes_image(self.workflow)

    @property
    def paints_outside(self) -> bool:
        """Whether it can paint outside a picture (Zoom Out, Pan): comfyui with {{image}} and {{mask}}."""
        return self.preset.paints_outside(self.workflow)


class Endpoints:
    def __init__(self, settings: Settings, storage: Storage, vault: Vault, runpod: RunPodContext) -> None:
        self._settings = settings
        self._storage = storage
        self._vault = vault
        self._runpod = runpod

    @property
    def can_store_keys(self) -> bool:
        return self._vault.available

    async def for_guild(self, guild_id: int | None, model: str | None = None) -> Endpoint:
        """The guild's model (its default when unnamed), else the operator's default endpoint."""
        if guild_id is not None:
            saved = await self._storage.guild_endpoint(guild_id, model)
            if saved is not None:
                workflow = parse_workflow(saved.workflow) if saved.workflow else None
                key = self._vault.decrypt(saved.api_key_encrypted)
                preset = PRESETS[saved.worker]
                return Endpoint(key, saved.endpoint_id, preset, workflow, KeySource.GUILD, model=saved.name)
            if model is not None:
                raise BotError(f"This server has no model called “{model}”. Pick one from the list.")
        settings = self._settings
        try:
            key, endpoint_id = settings.require_runpod()
        except ConfigError:
            raise NotConfigured() from None
        return Endpoint(key, endpoint_id, PRESETS[settings.runpod_worker])

    async def of_record(self, record: JobRecord) -> Endpoint:
        """The endpoint a recorded job ran on, never another guild's or a newer one."""
        guild_id = record.guild_id if record.key_source is KeySource.GUILD else None
        endpoint = await self.for_guild(guild_id, record.model if guild_id is not None else None)
        if endpoint.endpoint_id != record.endpoint_id or endpoint.source != record.key_source:
            raise BotError("This server's RunPod endpoint changed while the job ran, so it can no longer be followed.")
        return endpoint

    def client(self, endpoint: Endpoint) -> RunPodClient:
        return self._runpod.client(endpoint.api_key, endpoint.endpoint_id)

    async def models(self, guild_id: int) -> list[GuildEndpoint]:
        """The guild's own endpoints, "default" first."""
        return await self._storage.guild_endpoints(guild_id)

    async def connect(
        self,
        guild_id: int,
        name: str,
        api_key: Secret,
        endpoint_id: str,
        worker: str,
        workflow: str | None,
        *,
        by: int,
    ) -> Health:
        """Check the key against RunPod (`/health`), then save it encrypted. RunPod's refusal is raised."""
        if workflow is not None:
            parse_workflow(workflow)
        health = await self._runpod.client(api_key, endpoint_id).health()
        await self._storage.save_guild_endpoint(
            GuildEndpoint(
                guild_id=guild_id,
                name=name,
                endpoint_id=endpoint_id,
                api_key_encrypted=self._vault.encrypt(api_key.reveal()),
                worker=worker,
                workflow=workflow,
                updated_by=by,
            )
        )
        return health

    async def remove(self, guild_id: int, name: str = DEFAULT_MODEL) -> bool:
        return await self._storage.delete_guild_endpoint(guild_id, name)

    async def policy(self, guild_id: int | None) -> GuildPolicy:
        saved = await self._storage.guild_policy(guild_id) if guild_id is not None else None
        return GuildPolicy.from_json(saved)

    async def save_policy(self, guild_id: int, policy: GuildPolicy) -> None:
        await self._storage.save_guild_policy(guild_id, policy.to_json())

    async def rotate_keys(self) -> None:
        """With several BOT_ENCRYPTION_KEYs, re-encrypt stored server keys under the first one, so the
        operator can drop the old key after one restart."""
        if len(self._settings.encryption_keys) < 2:
            return
        try:
            count = await self._storage.rewrite_keys(self._vault.rotate)
        except BotError as error:
            log.error("key rotation stopped: %s", error)
            return
        log.info("re-encrypted %d stored server key(s) under the first BOT_ENCRYPTION_KEY", count)

    async def recall_run_times(self) -> None:
        """Teach each endpoint's polling the queue and run times the ledger remembers, so that a restarted
        bot polls as sparingly and finds finished jobs as soon as before."""
        for guild_id, endpoint_id, delay_ms, execution_ms in await self._storage.recent_run_times():
            stats = self._runpod.stats(endpoint_id, guild_id)
            stats.record(run_s=execution_ms / 1000, wait_s=delay_ms / 1000 if delay_ms is not None else None)
