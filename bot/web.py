"""The bot's one small HTTP server, on $PORT (aiohttp's own `web`): health, metrics, and RunPod's webhooks.

- `GET /healthz`: 200 and a small JSON once the gateway is ready and the database answers; 503 otherwise, saying
  which, so a PaaS health check or an operator's curl reads the reason.
- `GET /metrics`: Prometheus text (bot/metrics.py).
- `POST /runpod/webhook/<request>/<part>/<token>`: a wake-up call for that job's follower (bot/push.py). Its
  body is never read: what is posted is what `/status` says. A wrong token, an unknown or ended job: 404.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bot.errors import ConfigError
from bot.push import WEBHOOK_PATH

if TYPE_CHECKING:
    from bot.bot import ImagineBot

log = logging.getLogger(__name__)

DATABASE_PATIENCE = 2.0  # seconds /healthz waits for the database before calling it unhealthy


class WebServer:
    def __init__(self, bot: ImagineBot, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 (a PaaS routes to it)
        self._bot = bot
        self._port = port
        self._host = host
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post(WEBHOOK_PATH + "/{tail:.*}", self.webhook)
        self._runner = web.AppRunner(app, access_log=None)  # a poll every few seconds must not fill the logs

    async def start(self) -> None:
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as error:
            await self._runner.cleanup()
            raise ConfigError(f"PORT {self._port}: cannot listen there ({error.strerror or error})") from None
        log.info("web server listening on port %d (/healthz, /metrics%s)", self._port, self._webhooks_note)

    async def stop(self) -> None:
        await self._runner.cleanup()

    @property
    def _webhooks_note(self) -> str:
        return ", RunPod's webhooks" if self._bot.runner.webhooks else ""

    async def healthz(self, _request: web.Request) -> web.Response:
        bot = self._bot
        gateway = "ready" if bot.is_ready() and not bot.is_closed() else ("closed" if bot.is_closed() else "starting")
        try:
            async with asyncio.timeout(DATABASE_PATIENCE):
                await bot.storage.ping()
            database = "ok"
        except Exception as error:  # any failure is the answer here, not a crash of the health check
            log.warning("health check: the database did not answer: %s", type(error).__name__)
            database = "unavailable"
        healthy = gateway == "ready" and database == "ok"
        body = {
            "status": "ok" if healthy else "unhealthy",
            "gateway": gateway,
            "database": database,
            "live_jobs": len(bot.runner.live),
            "webhooks": bot.runner.webhooks is not None,
        }
        return web.json_response(body, status=200 if healthy else 503)

    async def metrics(self, _request: web.Request) -> web.Response:
        response = web.Response(body=self._bot.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def webhook(self, request: web.Request) -> web.Response:
        runner = self._bot.runner
        call = runner.webhooks.check(request.path) if runner.webhooks else None
        woken = call is not None and await runner.wake(call)
        # stale: a true address whose job has ended (or is unknown here); refused: an address the bot never gave
        outcome = "woke" if woken else ("stale" if call is not None else "refused")
        self._bot.metrics.webhooks.labels(outcome).inc()
        if not woken:
            log.debug("webhook for %s: %s", request.path.rsplit("/", 1)[0], outcome)
            raise web.HTTPNotFound()
        return web.Response(text="ok")
