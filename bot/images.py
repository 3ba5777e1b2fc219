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
import math
import re
import socket
from collections import Counter, deque
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
# which inflates nothing; every step that does inflate one is paid for where it happens: preparing a picture to
# start from (`prepare_bytes`) and re-encoding one to fit Discord's upload limit (bot/delivery.py).
DECODE_BYTES_PER_PIXEL = {"PNG": 0, "JPEG": 12, "WEBP": 28}
# Work that inflates nothing (base64 of an answer, a header, a PNG's chunk CRCs) on this many bytes at most takes a
# few milliseconds: it runs at once on the event loop rather than wait its turn behind another server's seconds of
# decoding on the pictures' thread (1 ms for 1.6 MB, measured as said at `decode_image`).
LIGHT_WORK_BYTES = 8 * 1024 * 1024
# Preparing a picture to start from (`fit_start`) decodes it whatever its format: 4 bytes a pixel, 4 more for a
# converted copy (palette, grey, 16 bits); a JPEG or WebP is counted as when it is decoded above, if that is more.
INFLATE_BYTES_PER_PIXEL = 8
# Its result, per pixel of the size sent: the resized picture (4 bytes), and the PNG or JPEG made of it (an RGB copy
# of 4, the JPEG encoder's coefficients and the encoded bytes: 8 to 12 measured), as bot/delivery.py counts it.
RESULT_BYTES_PER_PIXEL = 18
# How much memory the pictures being decoded or re-encoded at once may take together, process-wide, unless the
# operator says otherwise (PICTURE_MEMORY_MB, bot/config.py): a hostile worker's output costs the bot this much at
# most, whatever it holds, and a picture that alone would need more is refused without being decoded. 256 MB is the
# smallest power of two in which the largest legal result fits where it costs most: a 4x upscaler's 4096x4096 PNG
# re-encoded to fit Discord's upload limit (16.7 megapixels at 14 bytes, bot/delivery.py), or the same picture as a
# JPEG decoded (at 12); a WebP passes up to 9.5 megapixels (3090x3090), and a picture to start from is prepared for
# its worker (`prepare_bytes`) from up to 16.7 megapixels. A PNG, only checked, may have up to MAX_PIXELS.
PICTURE_MEMORY = 256 * 1024 * 1024


@dataclass(frozen=True)
class ImageHeader:
    """What a picture says it is, read from its header before anything is decoded."""

    width: int
    height: int
    format: str  # PNG, JPEG or WEBP

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decode_bytes(self) -> int:
        """The memory decoding it takes (`DECODE_BYTES_PER_PIXEL`)."""
        return self.pixels * DECODE_BYTES_PER_PIXEL.get(self.format, max(DECODE_BYTES_PER_PIXEL.values()))


def too_much_memory(where: str, header: ImageHeader, needed: int, limit: int, *, doing: str = "decoding") -> str:
    """The refusal of a picture whose work would take more than the whole memory for pictures, in a member's words."""
    return (
        f"{where} is a {header.width}×{header.height} {header.format}: {doing} it would take about "
        f"{size_text(needed)} of memory, over the {size_text(limit)} the bot allows for pictures; refused."
    )


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
JPEG_QUALITIES = (92, 85, 75)  # tried in turn when a picture must be re-encoded to fit


def start_size(width: int, height: int, *, factor: int = 1, max_pixels: int) -> tuple[int, int]:
    """The size a picture to start from is sent at: `factor` times its own (2 for an upscale), made smaller, keeping
    its shape, until it has at most `max_pixels` (what the worker takes, `WorkerPreset.max_start_pixels`)."""
    wide, high = width * factor, height * factor
    if wide * high > max_pixels:
        scale = math.sqrt(max_pixels / (wide * high))
        wide, high = max(1, math.floor(wide * scale)), max(1, math.floor(high * scale))
    return wide, high


def prepare_bytes(header: ImageHeader, size: tuple[int, int]) -> int:
    """The memory `fit_start` takes to turn this picture into one of `size`: the picture decoded (and converted),
    Lanczos's intermediate (one pass at the new width over the old height, 4 bytes a pixel), and the result with its
    encoding (`RESULT_BYTES_PER_PIXEL`)."""
    decoded = header.pixels * max(INFLATE_BYTES_PER_PIXEL, DECODE_BYTES_PER_PIXEL.get(header.format, 28))
    intermediate = 4 * size[0] * header.height if size != (header.width, header.height) else 0
    return decoded + intermediate + size[0] * size[1] * RESULT_BYTES_PER_PIXEL


def fit_start(data: bytes, where: str, *, size: tuple[int, int], max_bytes: int, max_pixels: int = MAX_PIXELS) -> bytes:
    """A picture to start from, at `size` (resampled with Lanczos), in at most `max_bytes`: as PNG when that fits,
    else as JPEG, else as a JPEG scaled down until it fits. Blocking: call it in a thread, with its memory
    (`prepare_bytes`) held from the budget."""
    with _opened(data, where, max_pixels) as image:
        if image.format == "JPEG" and size[0] <= image.width and size[1] <= image.height:
            image.draft("RGB", size)  # a JPEG much larger than needed is decoded at 1/2, 1/4 or 1/8 of its size
        image.load()
        picture: Image.Image = image
        if picture.mode not in ("RGB", "RGBA"):  # Lanczos needs it; a palette would be resized as nearest
            picture = picture.convert("RGBA" if "A" in picture.getbands() or "transparency" in image.info else "RGB")
        if picture.size != size:
            picture = picture.resize(size, Image.Resampling.LANCZOS)
    png = _to_png(picture)
    if len(png) <= max_bytes:
        return png
    del png
    rgb = picture.convert("RGB") if picture.mode != "RGB" else picture
    del picture
    return jpeg_within(rgb, max_bytes)[0]


def jpeg_within(rgb: Image.Image, max_bytes: int) -> tuple[bytes, tuple[int, int]]:
    """An RGB picture as a JPEG of at most `max_bytes`, and the size it shows: at the best of `JPEG_QUALITIES` that
    fits, else at the lowest, scaled down until it fits. Blocking: for the pictures' thread."""
    data = b""
    for quality in JPEG_QUALITIES:
        data = _jpeg(rgb, quality)
        if len(data) <= max_bytes:
            return data, rgb.size
    scale = 1.0
    while True:
        scale *= 0.8 * (max_bytes / len(data)) ** 0.5
        smaller = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        data = _jpeg(rgb.resize(smaller, Image.Resampling.LANCZOS), JPEG_QUALITIES[-1])
        if len(data) <= max_bytes or smaller == (1, 1):
            return data, smaller


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


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _text_bytes(value: Any, cap: int) -> int:
    """The length of the text in a parsed JSON answer (its pictures' base64, mostly), counted up to about `cap`."""
    if isinstance(value, str):
        return len(value)
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    total = 0
    for child in children:
        total += _text_bytes(child, cap - total)
        if total > cap:
            break
    return total


class _RoundRobin:
    """Waiters served one tenant after another (a guild id; None for the terminal), in order within a tenant, like
    the fair queue of jobs (bot/policy.py): a tenant with a hundred waiting is served once, then every other tenant
    waiting is served once, before it is served again. The first in that order waits until it can be served (it is
    not overtaken, so a large request is never starved by small ones). `close` cancels every waiter, and every
    later one."""

    def __init__(self) -> None:
        self._queues: dict[object, deque[tuple[int, asyncio.Future[None]]]] = {}  # in the order they are served
        self.closed = False

    def _fits(self, amount: int) -> bool:
        raise NotImplementedError

    def _take(self, amount: int) -> None:
        raise NotImplementedError

    def _capped(self, tenant: object) -> bool:
        """Whether this tenant holds all it may for now: passed over, not waited for, while it is."""
        return False

    def _took(self, tenant: object) -> None:
        """A tenant was served (for the subclasses that count what each one holds)."""

    def _give_back(self, amount: int) -> None:
        raise NotImplementedError

    @property
    def waiting(self) -> int:
        return sum(1 for queue in self._queues.values() for _, future in queue if not future.done())

    def _try(self, amount: int, tenant: object = None) -> bool:
        """Served at once, if it fits and nobody it would overtake waits (a tenant at its cap waits for no one)."""
        if self.closed:
            raise asyncio.CancelledError("the bot is shutting down")
        overtaking = any(not self._capped(waiting) for waiting in self._queues)
        if overtaking or self._capped(tenant) or not self._fits(amount):
            return False
        self._take(amount)
        self._took(tenant)
        return True

    async def _wait(self, amount: int, tenant: object) -> None:
        if self._try(amount, tenant):
            return
        granted = asyncio.get_running_loop().create_future()
        entry = (amount, granted)
        self._queues.setdefault(tenant, deque()).append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted just as it was cancelled: give it back
                self._give_back(amount)
            else:
                queue = self._queues.get(tenant)
                if queue is not None:
                    with contextlib.suppress(ValueError):
                        queue.remove(entry)
                    if not queue:
                        del self._queues[tenant]
                self._grant()  # it may have been the one the others waited behind
            raise

    def _grant(self) -> None:
        while self._queues:
            tenant, queue = next(((t, q) for t, q in self._queues.items() if not self._capped(t)), (None, None))
            if queue is None:  # every tenant waiting holds all it may: the next release serves one
                return
            amount, granted = queue[0]
            if granted.done():  # its waiter was cancelled and has not woken up yet
                queue.popleft()
                if not queue:
                    del self._queues[tenant]
                continue
            if not self._fits(amount):
                return
            queue.popleft()
            del self._queues[tenant]
            if queue:
                self._queues[tenant] = queue  # to the back: every other tenant waiting goes first
            self._take(amount)
            self._took(tenant)
            granted.set_result(None)

    def _cancel_waiters(self) -> int:
        """Cancel every waiter (they raise `CancelledError`) and every later one; how many were waiting."""
        self.closed = True
        dropped = 0
        for queue in self._queues.values():
            for _, granted in queue:
                if not granted.done():
                    granted.cancel()
                    dropped += 1
        self._queues.clear()
        return dropped


class FairTurns(_RoundRobin):
    """`slots` turns, handed out round-robin by tenant (`_RoundRobin`): what `RunPodContext.picture_turns` is. One
    tenant holds at most `per_tenant` at once (all but one, by default), so a turn is always left for another
    server: one server's answers of ten large pictures each, minutes of checking, never make another wait for
    them all."""

    def __init__(self, slots: int, per_tenant: int | None = None) -> None:
        super().__init__()
        self.slots = slots
        self.per_tenant = per_tenant or max(1, slots - 1)
        self.taken = 0
        self.held: Counter[object] = Counter()  # by tenant

    def _fits(self, amount: int) -> bool:
        return self.taken < self.slots

    def _take(self, amount: int) -> None:
        self.taken += 1

    def _capped(self, tenant: object) -> bool:
        return self.held[tenant] >= self.per_tenant

    def _took(self, tenant: object) -> None:
        self.held[tenant] += 1

    def _give_back(self, amount: int) -> None:
        self.taken -= 1
        self._grant()

    def try_acquire(self, tenant: object = None) -> bool:
        """A turn at once, if one is free, the tenant has not all it may, and nobody it would overtake waits."""
        return self._try(1, tenant)

    async def acquire(self, tenant: object = None) -> None:
        await self._wait(1, tenant)

    def release(self, tenant: object = None) -> None:
        self.held[tenant] -= 1
        if self.held[tenant] <= 0:
            del self.held[tenant]
        self._give_back(1)

    def close(self) -> int:
        """Cancel every waiter, and every later one (shutdown); how many were waiting."""
        return self._cancel_waiters()


class MemoryBudget(_RoundRobin):
    """Bytes that the pictures being decoded or re-encoded at once may take together, shared by the whole process,
    and the thread that does that work. Work waits until a thread is free and its memory fits, served round-robin by
    tenant (`_RoundRobin`): a server with a hundred pictures to check has them checked one at a time between the
    other servers' pictures, never all before them. The memory stays counted until the work has ended, even if its
    caller is cancelled meanwhile (a thread cannot be stopped). Only work that runs is handed to a thread, so
    nothing piles up there: `close` (at shutdown) drops every waiting work at once.

    The work runs on threads of its own, one by default: the C allocator keeps what a thread frees for that
    thread's later use, so pictures decoded on many threads would each leave their high-water mark behind, and
    the process would grow past the budget while never using more than it at once. On one thread, each picture
    reuses the memory the last one freed."""

    def __init__(self, limit: int, *, threads: int = 1) -> None:
        super().__init__()
        self.limit = limit
        self.in_use = 0
        self.running = 0  # works on a thread now
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None

    def _fits(self, amount: int) -> bool:
        return self.running < self._threads and self.in_use + amount <= self.limit

    def _take(self, amount: int) -> None:
        self.in_use += amount
        self.running += 1

    def _give_back(self, amount: int) -> None:
        self.in_use -= amount
        self.running -= 1
        self._grant()

    async def run(self, amount: int, work: Callable[[], T], *, tenant: object = None, light: bool = False) -> T:
        """`work()` on the pictures' thread, once a thread is free, `amount` bytes are free and `tenant`'s turn has
        come, holding them until it has ended; `light` work (`LIGHT_WORK_BYTES`) at once, where it is. A
        `CancelledError` once the budget is closed."""
        if light and amount == 0:
            if self.closed:
                raise asyncio.CancelledError("the bot is shutting down")
            return work()
        if amount > self.limit:
            raise ValueError(f"{amount:,} bytes can never be held from a budget of {self.limit:,}")
        await self._wait(amount, tenant)
        try:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="pictures")
            done = asyncio.get_running_loop().run_in_executor(self._executor, work)
        except BaseException:
            self._give_back(amount)
            raise

        def ended(done: asyncio.Future[T]) -> None:
            self._give_back(amount)
            if not done.cancelled():
                done.exception()  # retrieved, in case the caller was cancelled and never will

        done.add_done_callback(ended)
        return await asyncio.shield(done)  # a cancelled caller leaves the work to end, its memory counted till then

    def close(self) -> int:
        """At shutdown: every waiting work is dropped (its caller gets a `CancelledError`), and so is every later
        one; the work running on the thread ends on its own, and the thread goes with it. How many were dropped."""
        dropped = self._cancel_waiters()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        return dropped


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

    async def find(self, output: Any, *, tenant: object = None) -> list[ImageSource]:
        """`find_images` on the pictures' thread: it base64-decodes megabytes, which stay there for the decoding."""
        light = _text_bytes(output, LIGHT_WORK_BYTES) <= LIGHT_WORK_BYTES
        return await self.budget.run(0, functools.partial(find_images, output), tenant=tenant, light=light)

    async def decode_all(self, sources: list[ImageSource], *, tenant: object = None) -> list[DecodedImage]:
        """All of a job's pictures, fetched at once and decoded as the budget allows (in `tenant`'s turns); the
        first that fails fails the job, and the others are not decoded for nothing."""
        tasks = [asyncio.ensure_future(self.decode(source, tenant=tenant)) for source in sources]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def decode(self, source: ImageSource, *, tenant: object = None) -> DecodedImage:
        data = source.data if source.data is not None else await self.fetch(source.url or "", source.where)
        if len(data) > self.max_bytes:
            raise OutputError(f"{source.where} is {len(data):,} bytes, over the {self.max_bytes:,} allowed.")
        light = len(data) <= LIGHT_WORK_BYTES
        check = functools.partial(read_header, data, source.where, max_pixels=self.max_pixels)
        header = await self.budget.run(0, check, tenant=tenant, light=light)
        needed = header.decode_bytes
        if needed > self.budget.limit:
            raise OutputError(too_much_memory(source.where, header, needed, self.budget.limit))
        decode = functools.partial(decode_image, data, source.where, source.seed, max_pixels=self.max_pixels)
        return await self.budget.run(needed, decode, tenant=tenant, light=light)  # a PNG is only checked: 0 bytes

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
