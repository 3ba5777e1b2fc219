"""Find the pictures in a worker's output, whatever its shape, and prove they are pictures.

Shapes (docs/runpod-api.md, Output shapes of image workers): worker-sdxl `{image_url, images[], seed}`,
worker-comfyui 5.x `{images: [{type: base64|s3_url, data}]}` and older `{status, message}`, A1111
`{images: [b64], info}`, SD v1 `[{image, seed}]`, public endpoints `{image_url: https://...}`, and bare
strings. Each entry may be a `data:image/...;base64,` URI, raw base64 or an https URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import re
import socket
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
import pybase64
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from PIL import Image, UnidentifiedImageError

from bot import safejson
from bot.errors import OutputError, size_text

MAX_IMAGES = 10  # Discord's attachments per message (docs/discord-notes.md, Upload limits): all go in one edit
MAX_PIXELS = 40_000_000  # ~6300x6300: far above any SD output, far below a decompression bomb
MAX_IMAGE_BYTES = 40 * 1024 * 1024
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
_BASE64 = re.compile(r"[A-Za-z0-9+/=_\-\s]+")
T = TypeVar("T")


@dataclass(frozen=True)
class ImageSource:
    """One picture found in an output, before it is fetched or decoded."""

    where: str  # e.g. "output.images[1]", so an error can say which entry was bad
    data: bytes | None = None
    url: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class DecodedImage:
    png: bytes = field(repr=False)  # the worker's own bytes when it sent PNG, else re-encoded to PNG
    width: int
    height: int
    source_format: str
    seed: int | None = None


# --- finding ------------------------------------------------------------------------------------


def find_images(output: Any) -> list[ImageSource]:
    """Every picture in a COMPLETED job's output; `OutputError` names what is wrong when there is none."""
    if output is None:
        raise OutputError("The job completed but the worker returned no output.")
    if isinstance(output, dict) and output.get("status") == "success_no_images":
        raise OutputError(
            "The ComfyUI workflow finished without saving an image: it needs a SaveImage node at the end."
        )
    default_seed = _seed(output.get("seed")) if isinstance(output, dict) else None
    seeds = _a1111_seeds(output) if isinstance(output, dict) else []
    sources = []
    for position, (where, value, seed) in enumerate(_candidates(output, "output")):
        if position == MAX_IMAGES:  # counted before the next one is decoded
            raise OutputError(
                f"The worker returned more than {MAX_IMAGES} images, and Discord takes at most {MAX_IMAGES} in one "
                "message: ask for fewer images per job."
            )
        if seed is None and position < len(seeds):
            seed = seeds[position]
        sources.append(_source(where, value, seed if seed is not None else default_seed))
    if not sources:
        keys = f" (keys: {', '.join(sorted(map(str, output))[:8])})" if isinstance(output, dict) else ""
        raise OutputError(f"The job completed but its output holds no image{keys}.")
    return sources


def _candidates(node: Any, where: str) -> Iterator[tuple[str, Any, int | None]]:
    """(where, string value, seed) for each image-like entry, in order, without duplicates."""
    if isinstance(node, str):
        yield where, node, None
    elif isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, str):
                yield f"{where}[{index}]", item, None
            elif isinstance(item, dict):
                yield from _from_entry(item, f"{where}[{index}]")
    elif isinstance(node, dict):
        images = node.get("images")
        if isinstance(images, list) and images:
            # worker-sdxl repeats images[0] as image_url; the list is the whole answer.
            yield from _candidates(images, f"{where}.images")
        elif isinstance(node.get("image_url"), str):
            yield f"{where}.image_url", node["image_url"], None
        elif isinstance(node.get("image"), str):
            yield from _from_entry(node, where)
        elif node.get("status") == "success" and isinstance(node.get("message"), str):
            yield f"{where}.message", node["message"], None  # worker-comfyui before 5.0


def _from_entry(entry: dict[str, Any], where: str) -> Iterator[tuple[str, Any, int | None]]:
    for key in ("data", "image", "url", "image_url"):
        if isinstance(entry.get(key), str):
            yield f"{where}.{key}", entry[key], _seed(entry.get("seed"))
            return


def _seed(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _a1111_seeds(output: dict[str, Any]) -> list[int]:
    """A1111 puts the seeds in `info`, a JSON string."""
    info = output.get("info")
    if not isinstance(info, str):
        return []
    try:
        parsed = safejson.loads(info)
    except ValueError:  # not JSON, or refused (nested too deep, too many values): the seeds are only a nicety
        return []
    seeds = parsed.get("all_seeds") if isinstance(parsed, dict) else None
    return [seed for seed in seeds if _seed(seed) is not None] if isinstance(seeds, list) else []


def _source(where: str, value: str, seed: int | None) -> ImageSource:
    text = value.strip()
    if text.startswith("data:"):
        header, comma, payload = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise OutputError(f"{where} is a data URI that is not base64-encoded.")
        if not header[5:].startswith("image/"):
            raise OutputError(f"{where} is a data URI of {header[5:].split(';')[0] or 'no type'}, not an image.")
        return ImageSource(where, data=_b64decode(payload, where), seed=seed)
    scheme = urlsplit(text[:64]).scheme.lower()  # a scheme is all before the first colon: no need to scan megabytes
    if scheme in ("http", "https"):
        return ImageSource(where, url=text, seed=seed)
    data = _canonical_b64decode(text)
    if data is None and (scheme or ("/" in text and not _BASE64.fullmatch(text))):
        raise OutputError(
            f"{where} is {text[:60]!r}, a path on the worker's own disk, not a picture. The worker could not "
            "upload it: give it working bucket credentials, or unset BUCKET_ENDPOINT_URL so it returns base64."
        )
    return ImageSource(where, data=data if data is not None else _lenient_b64decode(text, where), seed=seed)


def _canonical_b64decode(text: str) -> bytes | None:
    """What workers send: standard alphabet, padded, one line. SIMD-decoded and checked in one pass (a 2 MB
    picture takes 0.1 ms, 60 times faster than the standard library), so it costs next to nothing."""
    try:
        return pybase64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error included; also non-ASCII text
        return None


def _b64decode(text: str, where: str) -> bytes:
    data = _canonical_b64decode(text)
    return data if data is not None else _lenient_b64decode(text, where)


def _lenient_b64decode(text: str, where: str) -> bytes:
    """Line breaks, missing padding and the URL-safe alphabet, as some workers send them."""
    compact = "".join(text.split())
    if not compact or not _BASE64.fullmatch(compact):
        raise OutputError(f"{where} is neither base64, a data URI nor an https URL.")
    compact += "=" * (-len(compact) % 4)
    try:
        return pybase64.b64decode(compact, altchars=b"-_" if "-" in compact or "_" in compact else None, validate=True)
    except ValueError:
        raise OutputError(f"{where} is not valid base64.") from None


# --- validating ---------------------------------------------------------------------------------


# The memory a picture takes while it is decoded and re-encoded to PNG, in bytes per pixel, as measured with
# Pillow 12 on pictures of noise (the worst case for the PNG they become), with some room. A JPEG decodes to 4 bytes
# a pixel (Pillow keeps RGB in 32 bits), 4 more when its mode must be converted (grey, CMYK), and the PNG it becomes
# takes up to 4: 7.5 to 11.5 measured. libwebp decodes into two canvases of its own and hands Pillow a copy, 12
# bytes a pixel before Pillow's own 4 and the PNG: 18 to 25 measured. A PNG is only checked (see `decode_image`),
# which inflates nothing; re-encoding one to fit Discord's upload limit is counted where it happens (bot/delivery.py).
DECODE_BYTES_PER_PIXEL = {"PNG": 0, "JPEG": 12, "WEBP": 28}
# How much memory the pictures being decoded or re-encoded at once may take together, process-wide
# (`ImageFetcher.budget`): a hostile worker's output costs the bot this much at most, whatever it holds, and a
# picture that alone would need more is refused without being decoded. Pictures up to a JPEG of 11 megapixels
# (3340x3340) or a WebP of 4.7 (2190x2190) pass, where SDXL paints 1 megapixel and a 2x upscale 4; a PNG, only
# checked, may have up to MAX_PIXELS. Decoded one after another, ten such pictures never take more than this.
PICTURE_MEMORY = 128 * 1024 * 1024


@dataclass(frozen=True)
class ImageHeader:
    """What a picture says it is, read from its header before anything is decoded."""

    width: int
    height: int
    format: str  # PNG, JPEG or WEBP

    @property
    def decode_bytes(self) -> int:
        """The memory decoding it takes (`DECODE_BYTES_PER_PIXEL`)."""
        return self.width * self.height * DECODE_BYTES_PER_PIXEL.get(self.format, max(DECODE_BYTES_PER_PIXEL.values()))


def read_header(data: bytes, where: str, *, max_pixels: int = MAX_PIXELS) -> ImageHeader:
    """The picture's size and format, from its header alone; the errors of `decode_image` for what is not a
    picture or is over the pixel cap. Blocking, but quick: call it in a thread all the same."""
    with _opened(data, where, max_pixels) as image:
        return ImageHeader(image.width, image.height, image.format or "unknown")


def decode_image(data: bytes, where: str, seed: int | None = None, *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Open with Pillow under a pixel cap. A PNG is posted as sent, so it is checked, not decoded: its header,
    then every chunk's CRC, which a truncated or corrupted file fails (1 ms for 1.6 MB, a twentieth of
    inflating it). JPEG and WebP are decoded and re-encoded to PNG. Blocking: call it in a thread, with its
    memory (`read_header(...).decode_bytes`) held from `ImageFetcher.budget`, as `ImageFetcher.decode` does."""
    with _opened(data, where, max_pixels) as image:
        width, height = image.size
        source_format = image.format or "unknown"
        if source_format == "PNG":
            image.verify()
            png = data
        else:
            image.load()
            png = _to_png(image)
    return DecodedImage(png, width, height, source_format, seed)


UPSCALE_FACTOR = 2


def enlarge(data: bytes, where: str, *, factor: int = UPSCALE_FACTOR, max_pixels: int = MAX_PIXELS) -> bytes:
    """An upscale's starting picture: `factor` times the size, resampled with Lanczos, as PNG; the worker then
    paints the detail in (a low-strength image-to-image job). Blocking: call it in a thread."""
    with _opened(data, where, max_pixels) as image:
        if image.width * image.height * factor * factor > max_pixels:
            raise OutputError(f"{where} is too large to upscale ({image.width}×{image.height}).")
        image.load()
        larger = image.resize((image.width * factor, image.height * factor), Image.Resampling.LANCZOS)
    return _to_png(larger)


@contextlib.contextmanager
def _opened(data: bytes, where: str, max_pixels: int) -> Iterator[Image.Image]:
    """The picture, opened (its header read) under the pixel cap; Pillow's errors, here or in the `with` body,
    turned into `OutputError`s that say what is wrong."""
    try:
        with Image.open(BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise OutputError(f"{where} claims {width}×{height} pixels, over the {max_pixels:,} allowed; refused.")
            yield image
    except Image.DecompressionBombError:
        raise OutputError(f"{where} is a decompression bomb (absurd pixel count); refused.") from None
    except UnidentifiedImageError:
        raise OutputError(f"{where} is not a PNG, JPEG or WebP image.") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise OutputError(f"{where} is a damaged image ({error}).") from None


def _to_png(image: Image.Image) -> bytes:
    buffer = BytesIO()
    if image.mode not in ("RGB", "RGBA"):  # converting copies the whole picture: only when PNG needs it
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.save(buffer, "PNG")
    return buffer.getvalue()


class MemoryBudget:
    """Bytes that the pictures being decoded or re-encoded at once may take together, shared by the whole process,
    and the thread that does that work. Work that would go over waits, first come first served, so a big picture
    is not overtaken forever by small ones; the memory stays counted until the work has ended, even if its caller
    is cancelled meanwhile (a thread cannot be stopped).

    The work runs on threads of its own, one by default: the C allocator keeps what a thread frees for that
    thread's later use, so pictures decoded on many threads would each leave their high-water mark behind, and
    the process would grow past the budget while never using more than it at once. On one thread, each picture
    reuses the memory the last one freed."""

    def __init__(self, limit: int, *, threads: int = 1) -> None:
        self.limit = limit
        self.in_use = 0
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def run(self, amount: int, work: Callable[[], T]) -> T:
        """`work()` on the pictures' thread, once `amount` bytes are free, holding them until it has ended."""
        if amount > self.limit:
            raise ValueError(f"{amount:,} bytes can never be held from a budget of {self.limit:,}")
        if amount > 0:
            await self._acquire(amount)
        try:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="pictures")
            done = asyncio.get_running_loop().run_in_executor(self._executor, work)
        except BaseException:
            self._release(amount)
            raise

        def ended(done: asyncio.Future[T]) -> None:
            self._release(amount)
            if not done.cancelled():
                done.exception()  # retrieved, in case the caller was cancelled and never will

        done.add_done_callback(ended)
        return await asyncio.shield(done)  # a cancelled caller leaves the work to end, its memory counted till then

    def close(self) -> None:
        """Let the thread go once it is idle (a later `run` starts another)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def _acquire(self, amount: int) -> None:
        if not self._waiting and self.in_use + amount <= self.limit:
            self.in_use += amount
            return
        granted = asyncio.get_running_loop().create_future()
        entry = (amount, granted)
        self._waiting.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted just as it was cancelled: give it back
                self._release(amount)
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(entry)
                self._grant()  # it may have been the one the others waited behind
            raise

    def _release(self, amount: int) -> None:
        self.in_use -= amount
        self._grant()

    def _grant(self) -> None:
        while self._waiting:
            amount, granted = self._waiting[0]
            if granted.done():  # its waiter was cancelled and has not woken up yet
                self._waiting.popleft()
                continue
            if self.in_use + amount > self.limit:
                return
            self._waiting.popleft()
            self.in_use += amount
            granted.set_result(None)


# --- fetching -----------------------------------------------------------------------------------


# IPv6 addresses that reach an IPv4 address, and which one. The NAT64 well-known prefix carries it in its last 32
# bits: a NAT64 gateway connects to that IPv4 address, and on an IPv6-only host with DNS64 every IPv4-only image
# host resolves to one, so it is judged by the IPv4 address it carries, like an IPv4-mapped address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Refused whatever they carry. Local-use NAT64: where the IPv4 address sits in it is each network's choice (any
# prefix length from /32 to /96), so it cannot be read reliably. 6to4 and Teredo: tunnels, deprecated or nearly
# unused, whose embedded IPv4 address is that of a relay or a client behind a NAT, not the host connected to; no
# image host is reached only through them. IPv4-compatible (deprecated): a host may route it to the IPv4 address.
_TUNNELS = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("2002::/16"),
    ipaddress.IPv6Network("2001::/32"),
    ipaddress.IPv6Network("::/96"),
)


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Only globally routable unicast addresses: no loopback, private, link-local (cloud metadata) or CGNAT,
    including the IPv6 forms that lead to such IPv4 addresses (IPv4-mapped, NAT64, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in tunnel for tunnel in _TUNNELS):
            return False
        if address.ipv4_mapped:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.is_global and not address.is_multicast


class AddressRefused(OSError):
    """Raised inside aiohttp's connector, so a URL that resolves to a private address never connects."""


class _PublicOnlyResolver(AbstractResolver):
    """Checks the addresses aiohttp will actually connect to, which also defeats DNS rebinding."""

    def __init__(self, allowed: Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]) -> None:
        self._inner = DefaultResolver()
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [result for result in results if self._allowed(ipaddress.ip_address(result["host"]))]
        if not allowed:
            raise AddressRefused(f"{host} resolves only to private or local addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class ImageFetcher:
    """Turns `ImageSource`s into `DecodedImage`s: https only, public addresses only, capped and timed."""

    def __init__(
        self,
        *,
        max_bytes: int = MAX_IMAGE_BYTES,
        max_pixels: int = MAX_PIXELS,
        memory: int = PICTURE_MEMORY,
        timeout: float = 30.0,
        max_redirects: int = 3,
        address_allowed: Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool] = is_public_address,
        ssl: Any = True,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.budget = MemoryBudget(memory)  # one fetcher per process: every picture decoded or re-encoded shares it
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_redirects = max_redirects
        self._address_allowed = address_allowed
        self._ssl = ssl
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.budget.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def find(self, output: Any) -> list[ImageSource]:
        """`find_images` on the pictures' thread: it base64-decodes megabytes, which stay there for the decoding."""
        return await self.budget.run(0, functools.partial(find_images, output))

    async def decode_all(self, sources: list[ImageSource]) -> list[DecodedImage]:
        """All of a job's pictures, fetched at once and decoded as the budget allows; the first that fails fails
        the job, and the others are not decoded for nothing."""
        tasks = [asyncio.ensure_future(self.decode(source)) for source in sources]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def decode(self, source: ImageSource) -> DecodedImage:
        data = source.data if source.data is not None else await self.fetch(source.url or "", source.where)
        if len(data) > self.max_bytes:
            raise OutputError(f"{source.where} is {len(data):,} bytes, over the {self.max_bytes:,} allowed.")
        header = await self.budget.run(
            0, functools.partial(read_header, data, source.where, max_pixels=self.max_pixels)
        )
        needed = header.decode_bytes
        if needed > self.budget.limit:
            raise OutputError(
                f"{source.where} is a {header.width}×{header.height} {header.format}: decoding it would take about "
                f"{size_text(needed)} of memory, over the {size_text(self.budget.limit)} the bot allows for "
                "pictures; refused."
            )
        decode = functools.partial(decode_image, data, source.where, source.seed, max_pixels=self.max_pixels)
        return await self.budget.run(needed, decode)

    async def fetch(self, url: str, where: str) -> bytes:
        for _ in range(self._max_redirects + 1):
            self._check_url(url, where)
            try:
                async with self._get_session().get(url, allow_redirects=False, ssl=self._ssl) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    if response.status != 200:
                        raise OutputError(f"{where}: the image URL answered HTTP {response.status}.")
                    return await self._read_capped(response, where)
            except aiohttp.ClientConnectorError as error:
                if isinstance(error.os_error, AddressRefused):
                    raise OutputError(f"{where} points at a private or local address; refused.") from None
                raise OutputError(f"{where}: could not connect to {urlsplit(url).hostname}.") from None
            except (aiohttp.ClientError, TimeoutError):
                raise OutputError(f"{where}: downloading the image failed or timed out.") from None
        raise OutputError(f"{where}: the image URL redirected more than {self._max_redirects} times.")

    def _check_url(self, url: str, where: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise OutputError(f"{where} is not an https URL; only https images are fetched.")
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return  # a name: the resolver checks what it resolves to
        if not self._address_allowed(literal):
            raise OutputError(f"{where} points at a private or local address; refused.")

    async def _read_capped(self, response: aiohttp.ClientResponse, where: str) -> bytes:
        if (response.content_length or 0) > self.max_bytes:
            raise OutputError(f"{where} is {response.content_length:,} bytes, over the {self.max_bytes:,} allowed.")
        buffer = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            buffer += chunk
            if len(buffer) > self.max_bytes:
                raise OutputError(f"{where} is over the {self.max_bytes:,} bytes allowed.")
        return bytes(buffer)

    def _get_session(self) -> aiohttp.ClientSession:
        # Its own session: the resolver policy must not apply to the RunPod API session (tests run it on loopback).
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=_PublicOnlyResolver(self._address_allowed))
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session
