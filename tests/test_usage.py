"""The usage report: pictures (not jobs), cents, per-member figures, and its matplotlib chart; its figures as the
database sums them (SQLite and PostgreSQL), from a ledger written as the bot writes it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from io import BytesIO

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from bot.lifecycle import LedgerState
from bot.policy import GuildPolicy
from bot.storage import JobRecord, KeySource, Storage
from bot.usage import (
    DAY_AXIS,
    DAYS,
    HEIGHT,
    LISTED_MEMBERS,
    TOP_MEMBERS,
    WIDTH,
    MemberUse,
    UsageReport,
    build_report,
    chart_figure,
    dollars,
    gpu_time,
    read_figures,
    render_chart,
)

NOW = datetime(2026, 11, 22, 15, 0, tzinfo=UTC)
GUILD = 7


def job(
    request_id: int, user: int, count: int, state: LedgerState, run_ms: int | None, days_ago: int = 0, **changes
) -> JobRecord:
    values = dict(
        request_id=request_id,
        guild_id=GUILD,
        channel_id=1,
        user_id=user,
        user_name=f"Member {user}",
        params={"prompt": "x", "count": count},
        endpoint_id="ep",
        worker="sdxl",
        key_source=KeySource.GUILD,
        state=state,
        execution_ms=run_ms,
        created_at=NOW - timedelta(days=days_ago),
    )
    return JobRecord(**(values | changes))


async def report_of(url: str, records: list[JobRecord], policy: GuildPolicy) -> UsageReport:
    """The report of a ledger written as the bot writes it (so the per-day counters are kept with it)."""
    storage = await Storage.open(url)
    try:
        for record in records:
            assert await storage.record_job(record)
        return build_report(await read_figures(storage, GUILD, NOW), NOW, policy)
    finally:
        await storage.close()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/usage.db"


LEDGER = [
    job(1, 1, 4, LedgerState.COMPLETED, 12_000),
    job(2, 1, 2, LedgerState.COMPLETED, 6_000, days_ago=3),
    job(3, 2, 1, LedgerState.UNDELIVERABLE, 3_500),  # paid for: counted
    job(4, 2, 3, LedgerState.FAILED, 900),  # free
    job(5, 2, 2, LedgerState.CANCELLED, None),  # free
    job(6, 3, 4, LedgerState.COMPLETED, 30_000, days_ago=30),  # before the window
]


async def test_the_report_counts_pictures_per_day_and_member_with_costs(database_url):
    report = await report_of(database_url, LEDGER, GuildPolicy(gpu_price_per_second=0.0005))
    assert (report.total_pictures, report.not_counted) == (7, 5)
    assert report.total_gpu_seconds == pytest.approx(21.5)
    assert report.days[-1] == NOW.date() and len(report.days) == 30
    assert (report.pictures_by_day[-1], report.pictures_by_day[-4]) == (5, 2)
    assert report.gpu_seconds_by_day[-1] == pytest.approx(15.5)
    assert [(m.name, m.pictures, m.gpu_seconds) for m in report.members] == [
        ("Member 1", 6, 18.0),
        ("Member 2", 1, 3.5),
    ]
    assert report.members[0].cost == pytest.approx(0.009)
    assert report.summary() == (
        "Last 30 days: 7 pictures, 21.5 GPU seconds, estimated cost $0.01.\n"
        "Failed or cancelled (not counted): 5 pictures.\n"
        "By member:\n"
        "• Member 1: 6 pictures, 18 GPU seconds, $0.01\n"
        "• Member 2: 1 picture, 3.5 GPU seconds, < $0.01"
    )


async def test_without_a_price_no_cost_is_made_up_and_the_admin_learns_how_to_set_one(database_url):
    records = [job(n, n, 1, LedgerState.COMPLETED, 1000) for n in range(1, LISTED_MEMBERS + 3)]
    text = (await report_of(database_url, records, GuildPolicy())).summary()
    assert text.startswith(f"Last 30 days: {LISTED_MEMBERS + 2} pictures, {LISTED_MEMBERS + 2} GPU seconds.\n")
    assert "$" not in text.replace("`/runpod limits gpu_price_per_second`", "")
    assert "/runpod limits gpu_price_per_second" in text
    assert "• Member 1: 1 picture, 1 GPU second\n" in text
    assert text.endswith("…and 2 more members.")


@pytest.mark.parametrize(
    ("amount", "shown"),
    [(0, "$0.00"), (0.0035, "< $0.01"), (0.0049, "< $0.01"), (0.006, "$0.01"), (0.125, "$0.12"), (1234.5, "$1,234.50")],
)
def test_costs_are_to_the_cent_or_less_than_one(amount, shown):
    assert dollars(amount) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0 GPU seconds"), (0.94, "0.9 GPU seconds"), (1.0, "1 GPU second"), (12.25, "12.2 GPU seconds"),
     (3600.4, "3,600 GPU seconds")],
)  # fmt: skip
def test_gpu_time_reads_as_seconds(seconds, shown):
    assert gpu_time(seconds) == shown


async def test_the_chart_labels_both_axes_and_draws_the_day_label_inside_the_picture(sqlite_url):
    report = await report_of(sqlite_url, LEDGER, GuildPolicy())
    figure = chart_figure(report)
    labels = [(axes.get_xlabel(), axes.get_ylabel()) for axes in figure.axes]
    assert ("", "Pictures") in labels
    assert (DAY_AXIS, "GPU seconds") in labels
    day_axes = next(axes for axes in figure.axes if axes.get_xlabel() == DAY_AXIS)
    assert [tick.get_text() for tick in day_axes.get_xticklabels()][-1] == "Nov 22"  # the last tick is today

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    label = day_axes.xaxis.label
    assert label.get_visible()
    box = label.get_window_extent(canvas.get_renderer())
    assert 0 <= box.x0 < box.x1 <= WIDTH and 0 <= box.y0 < box.y1 <= HEIGHT  # inside, not cut off
    # Readable on a phone, which shows the picture about 360 points wide: type of 20 points or more on 800 pixels.
    assert WIDTH <= 800 and label.get_fontsize() >= 20
    assert all(tick.get_fontsize() >= 20 for tick in day_axes.get_xticklabels())
    assert len(day_axes.get_xticks()) <= 3  # few day labels: they do not run into each other at that width

    # The PNG itself, where the label was laid out: light text on the dark background.
    with Image.open(BytesIO(render_chart(report))) as image:
        assert (image.format, image.size) == ("PNG", (WIDTH, HEIGHT))
        rgb = image.convert("RGB")
        area = rgb.crop((int(box.x0), int(HEIGHT - box.y1), int(box.x1) + 1, int(HEIGHT - box.y0) + 1))
        light = sum(area.convert("L").histogram()[150:])  # the label's ink; bars and background are darker
        assert light > 20
        assert rgb.getpixel((2, 2)) == (0x31, 0x33, 0x38)  # Discord's dark background


async def test_an_empty_month_still_makes_a_chart(sqlite_url):
    report = await report_of(sqlite_url, [], GuildPolicy())
    assert report.summary().startswith("Last 30 days: 0 pictures, 0 GPU seconds.\n")
    with Image.open(BytesIO(render_chart(report))) as image:
        assert image.size == (WIDTH, HEIGHT)


async def test_members_are_ranked_by_the_database_and_named_by_their_latest_job(database_url):
    """The member list is the LISTED_MEMBERS who used the most GPU time, counted beyond them; a member is named as on
    their latest counted job; a member whose jobs all failed is not listed; another server's jobs never count."""
    records = [
        job(1, 1, 1, LedgerState.COMPLETED, 5_000, days_ago=2, user_name="Old name"),
        job(2, 1, 1, LedgerState.DELIVERED, 5_000, user_name="New name"),
        job(3, 1, 1, LedgerState.FAILED, 900, user_name="Failed name"),  # not counted: not where the name is read
        job(4, 2, 4, LedgerState.FAILED, 900),
        *(job(10 + n, 10 + n, 1, LedgerState.COMPLETED, 1000 + n) for n in range(LISTED_MEMBERS + 2)),
        job(99, 1, 4, LedgerState.COMPLETED, 60_000, guild_id=GUILD + 1),
    ]
    report = await report_of(database_url, records, GuildPolicy())
    assert report.member_count == LISTED_MEMBERS + 3
    assert [member.name for member in report.members[:3]] == ["New name", "Member 21", "Member 20"]
    assert len(report.members) == LISTED_MEMBERS
    assert "Member 2" not in [member.name for member in report.members]
    assert (report.total_pictures, report.not_counted) == (2 + LISTED_MEMBERS + 2, 5)
    assert report.summary().endswith("…and 3 more members.")


def test_members_past_the_charts_top_are_counted_not_dropped():
    days = tuple(date(2026, 11, 1) + timedelta(days=offset) for offset in range(DAYS))
    members = tuple(MemberUse(f"Member {n}", 1, 10.0 - n, None) for n in range(LISTED_MEMBERS))
    report = UsageReport(days, (1,) * DAYS, (1.0,) * DAYS, members, DAYS, float(DAYS), 0, None, member_count=14)
    figure = chart_figure(report)
    by_member = next(axes for axes in figure.axes if axes.get_title() == "GPU seconds by member")
    assert [label.get_text() for label in by_member.get_yticklabels()] == [f"Member {n}" for n in range(TOP_MEMBERS)]
    assert by_member.get_xlabel() == f"+{14 - TOP_MEMBERS} more members"
