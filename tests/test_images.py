"""Image extraction from every worker output shape, validation with Pillow, and the https-only fetcher."""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import json
import ssl
import struct
import threading
import time
import zlib
from io import BytesIO

import pytest
import trustme
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from bot import images
from bot.engine import describe_worker_error, parse_progress
from bot.errors import BotError, OutputError, RunPodError
from bot.images import (
    FairTurns,
    ImageFetcher,
    ImageSource,
    MemoryBudget,
    decode_image,
    find_images,
    is_public_address,
)
from bot.runpod import JobState, _parse_json, parse_status
from doubles import outputs
from doubles.outputs import make_jpeg, make_png, pixels

PNG_A, PNG_B = make_png(32, 24, seed=1), make_png(24, 32, seed=2)
MB = 1024 * 1024


async def decode(output: object) -> list:
    async with ImageFetcher() as fetcher:
        return await fetcher.decode_all(find_images(output))


@pytest.mark.parametrize(
    ("output", "seeds"),
    [
        (outputs.sdxl(PNG_A, PNG_B, seed=7), [7, 7]),
        (outputs.comfyui(PNG_A, PNG_B), [None, None]),
        (outputs.a1111(PNG_A, PNG_B, seeds=[11, 12]), [11, 12]),
        (outputs.sd_v1(PNG_A, PNG_B), [46578, 46579]),
        ([outputs.data_uri(PNG_A), outputs.b64(PNG_B)], [None, None]),
    ],
    ids=["worker-sdxl", "comfyui-5", "a1111", "sd-v1", "list-of-strings"],
)
async def test_every_multi_image_shape_gives_the_workers_pixels_in_order(output, seeds):
    images = await decode(output)
    assert [image.png for image in images] == [PNG_A, PNG_B]
    assert [(image.width, image.height) for image in images] == [(32, 24), (24, 32)]
    assert [image.seed for image in images] == seeds


@pytest.mark.parametrize(
    "output",
    [
        outputs.comfyui_legacy(PNG_A),
        outputs.sdxl_turbo(PNG_A),
        outputs.data_uri(PNG_A),
        outputs.b64(PNG_A),
        {"image": outputs.b64(PNG_A), "seed": 3},
        {"image_url": outputs.data_uri(PNG_A)},
    ],
    ids=["comfyui-legacy", "sdxl-turbo", "bare-data-uri", "bare-base64", "single-image-dict", "image_url-only"],
)
async def test_single_image_shapes(output):
    (image,) = await decode(output)
    assert image.png == PNG_A


async def test_base64_with_line_breaks_and_no_padding_still_decodes():
    text = outputs.b64(PNG_A).rstrip("=")
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    (image,) = await decode({"images": [wrapped]})
    assert image.png == PNG_A


async def test_jpeg_output_is_converted_to_png_with_the_same_picture():
    jpeg = make_jpeg(40, 30)
    (image,) = await decode(outputs.data_uri(jpeg, "image/jpeg"))
    assert image.source_format == "JPEG"
    assert image.png.startswith(b"\x89PNG")
    assert pixels(image.png) == pixels(jpeg)


def _flip_a_pixel_byte(png: bytes) -> bytes:
    """A PNG corrupted in transit: one byte of its compressed pixels changed, so that chunk's CRC no longer matches."""
    at = png.index(b"IDAT") + 10
    return png[:at] + bytes([png[at] ^ 0xFF]) + png[at + 1 :]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (None, "no output"),
        ({}, "holds no image"),
        (outputs.NO_IMAGES, "SaveImage"),
        (outputs.LOCAL_PATH_FALLBACK, "worker's own disk"),
        ({"images": ["data:image/png,notbase64"]}, "not base64-encoded"),
        ({"images": ["data:text/html;base64,PGI+"]}, "not an image"),
        ({"images": ["!!!not base64!!!"]}, r"output.images\[0\] is neither base64"),
        ({"images": [outputs.b64(b"hello, this is not a picture")]}, r"output.images\[0\] is not a PNG, JPEG or WebP"),
        ({"images": [outputs.b64(PNG_A[: len(PNG_A) // 2])]}, "damaged image"),
        ({"images": [outputs.b64(_flip_a_pixel_byte(PNG_A))]}, "damaged image"),
        ({"images": [outputs.b64(PNG_A)] * 11}, "more than 10 images, and Discord takes at most 10"),
    ],
)
async def test_bad_outputs_name_what_is_wrong(output, message):
    with pytest.raises(OutputError, match=message):
        await decode(output)


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file that claims an enormous canvas: the classic decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20_000, 100_000])
def test_decompression_bomb_is_refused_before_decoding(side):
    with pytest.raises(OutputError, match="refused"):
        decode_image(_png_header_only(side, side), "output.images[0]")


def test_pixel_cap_is_configurable():
    with pytest.raises(OutputError, match="32×24 pixels"):
        decode_image(PNG_A, "x", max_pixels=100)


async def test_oversized_bytes_are_refused():
    async with ImageFetcher(max_bytes=100) as fetcher:
        with pytest.raises(OutputError, match="over the 100 allowed"):
            await fetcher.decode(ImageSource("output.images[0]", data=PNG_A))


def _json_containers(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)


image_keys = st.sampled_from(["images", "image", "image_url", "data", "message", "status", "seed", "info", "type"])


def _output_containers(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(children, max_size=3) | st.dictionaries(image_keys, children, max_size=4)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    _json_containers,
    max_leaves=20,
)
shaped_values = st.recursive(
    st.none() | st.integers() | st.text(max_size=30) | st.sampled_from(["success", "data:image/png;base64,AAAA"]),
    _output_containers,
    max_leaves=15,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(json_values, shaped_values))
def test_extractor_fed_arbitrary_json_returns_sources_or_a_clear_error(output):
    try:
        sources = find_images(output)
    except OutputError as error:
        assert str(error)
        return
    assert sources
    for source in sources:
        assert (source.data is None) != (source.url is None)
        if source.data is not None:
            try:
                decode_image(source.data, source.where)
            except OutputError:
                pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_fed_arbitrary_bytes_raises_only_clear_errors(data):
    try:
        decode_image(data, "x")
    except BotError:
        pass


def test_a1111_info_nested_too_deep_is_ignored_and_the_pictures_still_come():
    output = outputs.a1111(PNG_A, PNG_B)
    output["info"] = "[" * 5000 + "]" * 5000  # the standard library's parser recursed until Python gave up
    assert [(source.data, source.seed) for source in find_images(output)] == [(PNG_A, None), (PNG_B, None)]


# --- arbitrary outputs, however nested ---------------------------------------------------------------

picture_like = st.sampled_from(
    [
        outputs.b64(PNG_A),
        outputs.data_uri(PNG_A),
        outputs.data_uri(make_jpeg(8, 8), "image/jpeg"),
        "iVBORw0KGgo" + "A" * 40,
        "data:image/png;base64,AAAA",
        "https://127.0.0.1/x.png",
        "simulated_uploaded/x.png",
        "[" * 3000 + "]" * 3000,
        '{"error_message": ' + "[" * 3000 + "]" * 3000 + "}",
        {"images": [outputs.b64(PNG_A)], "info": "[" * 3000 + "]" * 3000},
        {"images": [outputs.b64(PNG_A)] * 11},
    ]
)
wrappers = st.lists(
    st.sampled_from([None, "images", "image", "image_url", "data", "message", "progress", "info", "error"]),
    min_size=1,
    max_size=6,
)


def nest(leaf: object, wrappers: list[str | None], depth: int) -> tuple[object, str]:
    """`leaf` inside `depth` containers (a list for None, else a dict under that key), as a value and as JSON
    text, both built without recursion however deep."""
    value, openings, closings = leaf, [], []
    for level in range(depth):
        key = wrappers[level % len(wrappers)]
        value = [value] if key is None else {key: value}
        openings.append("[" if key is None else f'{{"{key}": ')
        closings.append("]" if key is None else "}")
    return value, "".join(reversed(openings)) + json.dumps(leaf) + "".join(closings)


def pictures_or_a_clear_error(output: object) -> None:
    try:
        sources = find_images(output)
    except OutputError:
        return
    for source in sources:
        if source.data is not None:
            try:
                decode_image(source.data, source.where)
            except OutputError:
                pass


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    leaf=st.one_of(picture_like, json_values, shaped_values),
    wrappers=wrappers,
    depth=st.one_of(st.integers(0, 80), st.integers(900, 4000)),
    state=st.sampled_from(["COMPLETED", "FAILED", "IN_PROGRESS"]),
)
@example(leaf=outputs.b64(PNG_A), wrappers=["images"], depth=5000, state="COMPLETED")
@example(leaf=None, wrappers=["progress"], depth=900, state="IN_PROGRESS")
@example(leaf="x", wrappers=[None], depth=900, state="FAILED")
def test_any_output_however_nested_ends_in_pictures_or_a_clear_error(leaf, wrappers, depth, state):
    output, text = nest(leaf, wrappers, depth)
    pictures_or_a_clear_error(output)  # as a worker returned it

    # ...and as RunPod's answer, through the status parsing and what the engine makes of each state.
    answer = f'{{"id": "j-u1", "status": "{state}", "output": {text}, "error": {text}}}'.encode()
    try:
        status = parse_status(_parse_json(answer, "status"), "status")
    except RunPodError as error:
        assert str(error)
        return
    if status.state is JobState.COMPLETED:
        pictures_or_a_clear_error(status.output)
    elif status.state is JobState.FAILED:
        assert describe_worker_error(status.error, status.output).startswith("The worker failed")
    else:
        parse_progress(status.output)


# --- the memory pictures take --------------------------------------------------------------------


def webp_decodes(monkeypatch) -> list[int]:
    """Spy on decoding: how many WebPs were being decoded at once, each time one started."""
    running, seen = [0], []
    lock = threading.Lock()
    real = images.decode_image

    def spy(data, *args, **kwargs):
        if not data.startswith(b"RIFF"):
            return real(data, *args, **kwargs)
        with lock:
            running[0] += 1
            seen.append(running[0])
        try:
            time.sleep(0.05)  # long enough that decodes started together surely overlap
            return real(data, *args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(images, "decode_image", spy)
    return seen


async def test_a_picture_that_alone_would_take_more_than_the_budget_is_refused_without_decoding(monkeypatch):
    bomb = outputs.make_webp(16383, 2400)  # a few bytes that a decoder inflates to over 600 MB
    decoded: list[str] = []
    monkeypatch.setattr(images, "decode_image", lambda data, where, *_, **__: decoded.append(where))
    with pytest.raises(
        OutputError,
        match=r"output.images\[\d\] is a 16383×2400 WEBP: decoding it would take about 1050 MB of memory, over the "
        r"256 MB the bot allows for pictures; refused",
    ):
        await decode({"images": [outputs.b64(bomb)] * 10})
    assert decoded == []


@pytest.mark.parametrize("threads", [1, 4])
async def test_pictures_that_fit_the_budget_only_one_at_a_time_are_decoded_one_at_a_time(monkeypatch, threads):
    webp = outputs.make_webp(1600, 1600)  # 2.6 megapixels: 72 MB to decode, over half of a 128 MB budget
    decoded = webp_decodes(monkeypatch)
    async with ImageFetcher() as fetcher:
        fetcher.budget = MemoryBudget(128 * MB, threads=threads)  # the budget, not the one thread
        pictures = await fetcher.decode_all(find_images({"images": [outputs.b64(webp)] * 4 + [outputs.b64(PNG_A)]}))
        fetcher.budget.close()
    assert [(picture.width, picture.height) for picture in pictures] == [(1600, 1600)] * 4 + [(32, 24)]
    assert decoded == [1, 1, 1, 1]


async def test_a_small_budget_is_honoured_and_named():
    async with ImageFetcher(memory=20_000) as fetcher:
        with pytest.raises(OutputError, match=r"64×64 JPEG: decoding it would take about 48 KB .* over the 20 KB"):
            await fetcher.decode_all(find_images(outputs.data_uri(make_jpeg(64, 64), "image/jpeg")))
        (png,) = await fetcher.decode_all(find_images(outputs.b64(PNG_A)))  # only checked: no memory needed
    assert png.png == PNG_A


async def test_memory_stays_counted_until_a_cancelled_callers_thread_has_ended():
    budget = MemoryBudget(100)
    release = threading.Event()
    first = asyncio.ensure_future(budget.run(80, lambda: release.wait(5)))
    await asyncio.sleep(0.05)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert budget.in_use == 80  # a thread cannot be stopped: its memory is still in use
    second = asyncio.ensure_future(budget.run(50, lambda: "second"))
    await asyncio.sleep(0.05)
    assert not second.done()
    release.set()
    assert await second == "second"
    assert budget.in_use == 0
    budget.close()


async def test_the_budget_serves_first_come_first_and_forgets_who_gave_up():
    budget = MemoryBudget(100, threads=2)
    release = threading.Event()
    order: list[str] = []
    holder = asyncio.ensure_future(budget.run(60, lambda: release.wait(5)))
    await asyncio.sleep(0.02)
    big = asyncio.ensure_future(budget.run(80, lambda: order.append("big")))
    await asyncio.sleep(0.02)
    small = asyncio.ensure_future(budget.run(10, lambda: order.append("small")))  # would fit, but comes later
    await asyncio.sleep(0.05)
    assert order == []
    big.cancel()  # the one it waited behind gives up: it goes ahead
    await asyncio.wait_for(small, 1)
    assert order == ["small"]
    release.set()
    await holder
    assert budget.in_use == 0
    with pytest.raises(ValueError, match="can never be held"):
        await budget.run(101, lambda: None)
    budget.close()


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        # NAT64's well-known prefix leads to the IPv4 address in its last 32 bits: judged by it.
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::a00:5", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b::6440:1", False),
        ("64:ff9b::808:808", True),
        # Local-use NAT64, 6to4, Teredo and IPv4-compatible addresses: refused whatever they carry.
        ("64:ff9b:1::a00:1", False),
        ("64:ff9b:1:808:8:800::", False),
        ("2002:7f00:1::1", False),
        ("2002:a9fe:a9fe::1", False),
        ("2002:808:808::1", False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
        ("2001:0:7f00:1::1", False),
        ("::7f00:1", False),
        ("::ffff:808:808", True),
    ],
)
def test_only_public_addresses_are_fetchable(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/a.png", "not an https URL"),
        ("ftp://example.com/a.png", "not an https URL"),
        ("https://127.0.0.1/a.png", "private or local"),
        ("https://169.254.169.254/latest/meta-data", "private or local"),
        ("https://[::1]/a.png", "private or local"),
        ("https://10.0.0.5:8443/a.png", "private or local"),
        ("https://localhost/a.png", "private or local"),
        ("https://[64:ff9b::a9fe:a9fe]/latest/meta-data", "private or local"),
        ("https://[2002:7f00:1::1]/a.png", "private or local"),
    ],
)
async def test_unsafe_urls_are_refused_without_fetching(url, message):
    async with ImageFetcher(timeout=5) as fetcher:
        with pytest.raises(OutputError, match=message):
            await fetcher.decode(ImageSource("output.image_url", url=url))


@pytest.fixture
def tls():
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    return server_context, client_context


@pytest.fixture
async def image_host(tls):
    """An https server on loopback; tests allow loopback explicitly, as production never does."""
    server_context, _ = tls
    app = web.Application()
    big = make_png(600, 600, seed=5)

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=PNG_A, content_type="image/png")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query.get("to", "/image.png"))

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=403, text="AccessDenied")

    async def streamed_big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no Content-Length: the cap must hold while reading
        await response.prepare(request)
        for start in range(0, len(big), 4096):
            await response.write(big[start : start + 4096])
        return response

    app.router.add_get("/image.png", image)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/expired.png", missing)
    app.router.add_get("/big.png", streamed_big)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = runner.addresses[0][1]
    yield f"https://localhost:{port}"
    await runner.cleanup()


def _loopback_allowed(address):
    return address.is_loopback


async def test_https_url_is_fetched_and_decoded(image_host, tls):
    async with ImageFetcher(address_allowed=_loopback_allowed, ssl=tls[1]) as fetcher:
        (image,) = await fetcher.decode_all(find_images(outputs.public_endpoint(f"{image_host}/image.png")))
    assert image.png == PNG_A


async def test_redirect_to_http_is_refused(image_host, tls):
    async with ImageFetcher(address_allowed=_loopback_allowed, ssl=tls[1]) as fetcher:
        with pytest.raises(OutputError, match="not an https URL"):
            await fetcher.fetch(f"{image_host}/redirect?to=http://localhost/x.png", "output.image_url")
        assert await fetcher.fetch(f"{image_host}/redirect", "output.image_url") == PNG_A


async def test_expired_url_and_streamed_oversize_are_clear_errors(image_host, tls):
    async with ImageFetcher(address_allowed=_loopback_allowed, ssl=tls[1], max_bytes=50_000) as fetcher:
        with pytest.raises(OutputError, match="HTTP 403"):
            await fetcher.fetch(f"{image_host}/expired.png", "output.image_url")
        with pytest.raises(OutputError, match="over the 50,000 bytes"):
            await fetcher.fetch(f"{image_host}/big.png", "output.image_url")


async def test_name_resolving_to_loopback_is_refused_by_the_default_policy(image_host, tls):
    async with ImageFetcher(ssl=tls[1]) as fetcher:
        with pytest.raises(OutputError, match="private or local"):
            await fetcher.fetch(f"{image_host}/image.png", "output.image_url")


def test_png_round_trip_helper_is_honest():
    image = Image.open(BytesIO(PNG_A))
    assert image.size == (32, 24)
    assert base64.b64decode(outputs.b64(PNG_A)) == PNG_A


async def test_the_budget_serves_servers_in_turn_whoever_queued_more_first():
    """One picture thread, first come first served, made a server with 120 pictures to check go before all others."""
    budget = MemoryBudget(100)
    release = threading.Event()
    order: list[str] = []
    holder = asyncio.ensure_future(budget.run(10, lambda: release.wait(5), tenant="hostile"))
    await asyncio.sleep(0.02)
    queued = [
        asyncio.ensure_future(budget.run(10, functools.partial(order.append, f"hostile {n}"), tenant="hostile"))
        for n in range(5)
    ]
    queued.append(asyncio.ensure_future(budget.run(0, lambda: order.append("innocent"), tenant="innocent")))
    queued.append(asyncio.ensure_future(budget.run(10, lambda: order.append("terminal"))))  # the CLI: tenant None
    release.set()
    await asyncio.gather(holder, *queued)
    assert order == ["hostile 0", "innocent", "terminal", "hostile 1", "hostile 2", "hostile 3", "hostile 4"]
    assert (budget.in_use, budget.running) == (0, 0)
    budget.close()


async def test_closing_the_budget_drops_waiting_work_and_cancels_its_callers():
    """At shutdown, queued picture work ran to its end first: SIGTERM took 19 s to exit."""
    budget = MemoryBudget(100)
    release = threading.Event()
    ran: list[int] = []
    running = asyncio.ensure_future(budget.run(50, lambda: release.wait(5) and "ended"))
    await asyncio.sleep(0.02)
    queued = [asyncio.ensure_future(budget.run(0, functools.partial(ran.append, n), tenant=n % 2)) for n in range(8)]
    await asyncio.sleep(0.02)
    assert budget.close() == 8
    release.set()
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
    assert await running == "ended"  # the work on the thread ends on its own
    assert ran == [] and budget.in_use == 0
    with pytest.raises(asyncio.CancelledError):
        await budget.run(0, lambda: ran.append(99))  # nothing later runs either
    assert ran == []


async def test_one_server_never_holds_every_picture_turn():
    """A server whose answers take minutes to check holds at most all turns but one: another server's answer is
    read at once, and the busy server's next one waits for one of its own to end."""
    turns = FairTurns(3)
    for _ in range(2):
        assert turns.try_acquire("busy")
    assert not turns.try_acquire("busy")  # at its share, with a turn still free
    more = asyncio.ensure_future(turns.acquire("busy"))
    await asyncio.sleep(0)
    assert not more.done() and turns.waiting == 1
    assert turns.try_acquire("other")  # not held up behind the busy server's waiting answer
    turns.release("other")
    assert not more.done()  # the free turn is not the busy server's
    turns.release("busy")
    await asyncio.wait_for(more, 1)
    assert turns.held == {"busy": 2}


async def test_a_small_png_is_checked_at_once_while_another_server_s_picture_is_decoded():
    """Checking a PNG inflates nothing: it never waits behind another server's seconds of decoding on the thread."""
    release = threading.Event()
    async with ImageFetcher() as fetcher:
        busy = asyncio.ensure_future(fetcher.budget.run(10 * MB, lambda: release.wait(5), tenant="busy"))
        await asyncio.sleep(0.05)
        (picture,) = await asyncio.wait_for(fetcher.decode_all(find_images(outputs.b64(PNG_A)), tenant="other"), 1)
        assert picture.png == PNG_A and not busy.done()
        release.set()
        await busy
