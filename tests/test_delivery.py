"""Fitting pictures under Discord's per-file and per-request upload limits."""

from __future__ import annotations

from io import BytesIO

from PIL import Image

from bot import delivery
from bot.delivery import fit_for_upload
from doubles.outputs import make_png


def test_pictures_that_fit_are_sent_untouched():
    pngs = [make_png(seed=1), make_png(seed=2)]
    uploads = fit_for_upload(pngs, per_file_limit=10 * 1024 * 1024, stem="cat_7")
    assert [(upload.filename, upload.data, upload.note) for upload in uploads] == [
        ("cat_7-1.png", pngs[0], None),
        ("cat_7-2.png", pngs[1], None),
    ]


def test_too_big_becomes_jpeg_then_smaller_jpeg():
    png = make_png(400, 400, seed=3)  # random noise: ~480 KB as PNG, ~150 KB as JPEG
    (as_jpeg,) = fit_for_upload([png], per_file_limit=len(png) - 1, stem="x")
    assert as_jpeg.filename == "x.jpg"
    assert "sent as JPEG" in as_jpeg.note
    assert Image.open(BytesIO(as_jpeg.data)).size == (400, 400)

    (scaled,) = fit_for_upload([png], per_file_limit=20_000, stem="x")
    assert len(scaled.data) <= 20_000
    width, height = Image.open(BytesIO(scaled.data)).size
    assert width < 400
    assert width == height
    assert f"scaled down to {width}×{height}" in scaled.note


def test_four_large_pictures_share_the_request_limit(monkeypatch):
    monkeypatch.setattr(delivery, "MAX_REQUEST_BYTES", 200_000)  # a small stand-in for Discord's 25 MiB
    pngs = [make_png(150, 150, seed=n) for n in range(4)]
    assert all(len(png) < 100_000 for png in pngs)
    assert sum(len(png) for png in pngs) > 200_000
    uploads = delivery.fit_for_upload(pngs, per_file_limit=100 * 1024 * 1024, stem="x")
    assert sum(len(upload.data) for upload in uploads) <= 200_000
    assert all(upload.note for upload in uploads)
