"""What `GET /metrics` reports (Prometheus text, through `prometheus_client`), one registry per bot.

Labels come from fixed, small sets (states, operations, HTTP statuses, outcomes): never a key, a token, a
prompt, or an id. RunPod's and Discord's requests are counted where they leave, by aiohttp trace hooks on the
sessions that send them (bot/__main__.py), so no caller has to remember to count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import SimpleNamespace

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# The operations of RunPod's endpoint API (docs/runpod-api.md), named by the path segment that says which.
_RUNPOD_OPERATIONS = frozenset({"run", "runsync", "status", "cancel", "health", "stream", "purge-queue"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runpod_requests = Counter(
            "imagine_runpod_requests",
            "Requests to RunPod, by operation and HTTP status (error: no answer)",
            ["operation", "status"],
            registry=self.registry,
        )
        self.discord_requests = Counter(
            "imagine_discord_requests",
            "Requests to Discord's REST API by HTTP status (429: rate limited; error: no answer)",
            ["status"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "imagine_webhooks",
            "RunPod webhooks received: woke a follower (here or in another process), stale (its job ended: 404), "
            "refused (not an address the bot gave: 404)",
            ["outcome"],
            registry=self.registry,
        )
        self.delivery_lag = Histogram(
            "imagine_delivery_lag_seconds",
            "From RunPod's answer with the pictures to the pictures posted on Discord",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )

    def watch(self, name: str, documentation: str, read: Callable[[], Iterable[tuple[dict[str, str], float]]]) -> None:
        """A gauge read at each scrape (the live jobs, the fair queue): `read` gives (labels, value) pairs."""
        self.registry.register(_Reading(name, documentation, read))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def runpod_trace(self) -> aiohttp.TraceConfig:
        def operation(path: str) -> str:
            return next((segment for segment in path.split("/") if segment in _RUNPOD_OPERATIONS), "other")

        return self._trace(lambda path, status: self.runpod_requests.labels(operation(path), status).inc())

    def discord_trace(self) -> aiohttp.TraceConfig:
        return self._trace(lambda _path, status: self.discord_requests.labels(status).inc())

    @staticmethod
    def _trace(count: Callable[[str, str], None]) -> aiohttp.TraceConfig:
        async def ended(_session: object, _context: SimpleNamespace, params: aiohttp.TraceRequestEndParams) -> None:
            count(params.url.path, str(params.response.status))

        async def failed(
            _session: object, _context: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams
        ) -> None:
            count(params.url.path, "error")

        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(ended)
        trace.on_request_exception.append(failed)
        return trace


class _Reading(Collector):
    def __init__(
        self, name: str, documentation: str, read: Callable[[], Iterable[tuple[dict[str, str], float]]]
    ) -> None:
        self._name, self._documentation, self._read = name, documentation, read

    def collect(self) -> Iterable[Metric]:
        readings = list(self._read())
        labels = sorted({key for found, _ in readings for key in found})
        family = GaugeMetricFamily(self._name, self._documentation, labels=labels)
        for found, value in readings:
            family.add_metric([found.get(key, "") for key in labels], value)
        yield family
