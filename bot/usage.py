"""A guild's use of its GPU over the last 30 days: figures from the ledger (pictures, GPU seconds, cost), and a
chart drawn with matplotlib.

The figures are sums the database makes (`read_figures`: the per-day counters, and one sum over the jobs that do
not count), never a month of job rows summed in Python: a server with 200,000 jobs this month cannot hold the
event loop, and every other server's commands, for seconds. The chart is drawn in a thread (`render_chart`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from io import BytesIO
from typing import TYPE_CHECKING

from bot.policy import GuildPolicy
from bot.storage import Storage
from bot.text import dollars, plural

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DAYS = 30
TOP_MEMBERS = 5  # in the chart, which says how many more there are; the text lists a few more
LISTED_MEMBERS = 10


@dataclass(frozen=True)
class MemberUse:
    name: str
    pictures: int
    gpu_seconds: float
    cost: float | None  # None: the guild has set no price


@dataclass(frozen=True)
class UsageReport:
    days: tuple[date, ...]
    pictures_by_day: tuple[int, ...]
    gpu_seconds_by_day: tuple[float, ...]
    members: tuple[MemberUse, ...]  # most GPU time first, at most LISTED_MEMBERS
    total_pictures: int
    total_gpu_seconds: float
    not_counted: int  # pictures of failed and cancelled jobs: free for the member, shown for the admin
    cost: float | None
    member_count: int = 0  # every member who made pictures in these days, listed or not

    def summary(self) -> str:
        cost = f", estimated cost {dollars(self.cost)}" if self.cost is not None else ""
        lines = [
            f"Last {len(self.days)} days: {plural(self.total_pictures, 'picture')}, "
            f"{gpu_time(self.total_gpu_seconds)}{cost}.",
            f"Failed or cancelled (not counted): {plural(self.not_counted, 'picture')}.",
        ]
        if self.cost is None:
            lines.append("Set your endpoint's price with `/runpod limits gpu_price_per_second` to see costs.")
        if self.members:
            lines.append("By member:")
            for member in self.members[:LISTED_MEMBERS]:
                cost = f", {dollars(member.cost)}" if member.cost is not None else ""
                lines.append(
                    f"• {member.name[:32]}: {plural(member.pictures, 'picture')}, {gpu_time(member.gpu_seconds)}{cost}"
                )
            listed = min(len(self.members), LISTED_MEMBERS)
            if self.member_count > listed:
                lines.append(f"…and {plural(self.member_count - listed, 'more member')}.")
        return "\n".join(lines)


def gpu_time(seconds: float) -> str:
    """GPU seconds as an admin reads them: a tenth where it matters (short runs), whole seconds beyond."""
    shown = f"{seconds:,.1f}".removesuffix(".0") if seconds < 100 else f"{seconds:,.0f}"
    return plural(seconds, "GPU second", shown)


@dataclass(frozen=True)
class MemberTotal:
    user_id: int
    name: str
    pictures: int
    gpu_ms: int


@dataclass(frozen=True)
class UsageFigures:
    """What a report is made of, as the database sums it: a few dozen numbers, whatever the ledger's length."""

    by_day: dict[date, tuple[int, int]]  # day (UTC) -> (pictures, GPU ms), for the days that have any
    members: tuple[MemberTotal, ...]  # the LISTED_MEMBERS who used the most GPU time
    member_count: int  # every member who made pictures in these days
    not_counted: int  # pictures of jobs that failed or were cancelled


def first_day(now: datetime) -> date:
    """The first of the report's DAYS days, the last being today (UTC, as the per-day counters count)."""
    return (now.astimezone(UTC) - timedelta(days=DAYS - 1)).date()


async def read_figures(storage: Storage, guild_id: int, now: datetime) -> UsageFigures:
    """The report's figures for the DAYS days up to `now`: four aggregate queries, no job row read into Python."""
    first = first_day(now)
    since = datetime.combine(first, time(), tzinfo=UTC)
    by_day = await storage.usage_by_day(guild_id, first)
    member_count, top = await storage.usage_by_member(guild_id, first, LISTED_MEMBERS)
    names = await storage.member_names(guild_id, [user_id for user_id, _, _ in top], since)
    return UsageFigures(
        by_day={day: (pictures, gpu_ms) for day, pictures, gpu_ms in by_day},
        members=tuple(
            MemberTotal(user_id, names.get(user_id, f"user {user_id}"), pictures, gpu_ms)
            for user_id, pictures, gpu_ms in top
        ),
        member_count=member_count,
        not_counted=await storage.uncounted_pictures(guild_id, since),
    )


def build_report(figures: UsageFigures, now: datetime, policy: GuildPolicy) -> UsageReport:
    """The report of these figures: arithmetic on a few dozen numbers, cheap enough for the event loop."""
    first = first_day(now)
    days = tuple(first + timedelta(days=offset) for offset in range(DAYS))
    by_day = [figures.by_day.get(day, (0, 0)) for day in days]
    price = policy.gpu_price_per_second or None
    members = sorted(
        (
            MemberUse(member.name, member.pictures, gpu, gpu * price if price else None)
            for member in figures.members
            for gpu in (member.gpu_ms / 1000,)
        ),
        key=lambda member: (-member.gpu_seconds, -member.pictures, member.name),
    )
    total_gpu = sum(gpu_ms for _, gpu_ms in by_day) / 1000
    return UsageReport(
        days=days,
        pictures_by_day=tuple(pictures for pictures, _ in by_day),
        gpu_seconds_by_day=tuple(round(gpu_ms / 1000, 3) for _, gpu_ms in by_day),
        members=tuple(members),
        total_pictures=sum(pictures for pictures, _ in by_day),
        total_gpu_seconds=total_gpu,
        not_counted=figures.not_counted,
        cost=total_gpu * price if price else None,
        member_count=figures.member_count,
    )


# Discord's dark theme, so the chart sits in the conversation rather than on it. Tall and narrow, with large type:
# a phone shows a picture about 360 points wide, so every word here is drawn at least LABEL_SIZE points on 800
# pixels (about 15 points on the phone), and the panels are stacked rather than side by side.
WIDTH, HEIGHT, DPI = 800, 1100, 100
TITLE_SIZE, LABEL_SIZE, TICK_SIZE = 26, 22, 20
BACKGROUND = "#313338"
INK = "#DBDEE1"
MUTED = "#949BA4"
GRID = "#3F4147"
PICTURES = "#5865F2"  # blurple
GPU = "#23A55A"
DAY_AXIS = "Day (UTC)"
DAY_TICK_EVERY = 10  # days between the day axis's labels: three in a month, ending on today

# Matplotlib is not thread-safe (its text and font caches are shared); reports are rare, so one at a time.
_drawing = threading.Lock()


def chart_figure(report: UsageReport) -> Figure:
    """Pictures and GPU seconds per day (sharing the day axis), then GPU seconds by member, one above the other
    (the top TOP_MEMBERS, and "+N more" for the rest). Blocking.

    Built on `Figure` itself, never pyplot: no global figure state, no GUI backend, safe off the event loop.
    """
    # Imported here: matplotlib takes a moment to load, and only this report needs it.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, facecolor=BACKGROUND, layout="constrained")
    grid = figure.add_gridspec(3, 1, height_ratios=(1, 1, 1.3))
    by_pictures = figure.add_subplot(grid[0])
    by_gpu = figure.add_subplot(grid[1], sharex=by_pictures)
    by_member = figure.add_subplot(grid[2])
    figure.suptitle(
        f"Last {len(report.days)} days: {plural(report.total_pictures, 'picture')}\n"
        f"{gpu_time(report.total_gpu_seconds)}",
        color=INK,
        fontsize=TITLE_SIZE,
    )

    positions = range(len(report.days))
    by_pictures.bar(positions, report.pictures_by_day, color=PICTURES, width=0.75)
    by_pictures.set_ylabel("Pictures", color=INK, fontsize=LABEL_SIZE)
    by_pictures.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
    by_pictures.tick_params(labelbottom=False)
    by_gpu.bar(positions, report.gpu_seconds_by_day, color=GPU, width=0.75)
    by_gpu.set_ylabel("GPU seconds", color=INK, fontsize=LABEL_SIZE)
    by_gpu.yaxis.set_major_locator(MaxNLocator(nbins=3))
    by_gpu.set_xlabel(DAY_AXIS, color=INK, fontsize=LABEL_SIZE)
    # Few day labels, ending on today, which is what an admin looks for first.
    ticks = list(range(len(report.days) - 1, -1, -DAY_TICK_EVERY))[::-1]
    by_gpu.set_xticks(ticks, [report.days[tick].strftime("%b %d") for tick in ticks])
    by_gpu.set_xlim(-0.6, len(report.days) - 0.4)
    for axes, values in ((by_pictures, report.pictures_by_day), (by_gpu, report.gpu_seconds_by_day)):
        if not any(values):
            axes.set_ylim(0, 1)  # an empty month still gets a readable axis, not matplotlib's -0.05..0.05
        _style(axes)
        axes.grid(axis="y", color=GRID, linewidth=0.8)

    members = report.members[:TOP_MEMBERS]
    by_member.set_title("GPU seconds by member", color=INK, fontsize=LABEL_SIZE)
    if members:
        rows = range(len(members))
        by_member.barh(rows, [member.gpu_seconds for member in members], color=GPU, height=0.6)
        by_member.set_yticks(rows, [_short(member.name) for member in members])
        by_member.set_ylim(max(len(members), 4) - 0.5, -0.5)  # most first; a few members get bars, not slabs
        most = max(member.gpu_seconds for member in members) or 1.0
        by_member.set_xlim(0, most * 1.6)  # room for the picture counts beside the bars
        by_member.xaxis.set_major_locator(MaxNLocator(nbins=3))
        for row, member in zip(rows, members, strict=True):
            by_member.annotate(
                plural(member.pictures, "picture"),
                (member.gpu_seconds, row),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                color=MUTED,
                fontsize=TICK_SIZE,
            )
        by_member.grid(axis="x", color=GRID, linewidth=0.8)
        _style(by_member)
        more = max(report.member_count, len(report.members)) - len(members)
        if more > 0:  # nobody vanishes without a word
            by_member.set_xlabel(f"+{plural(more, 'more member')}", color=MUTED, fontsize=LABEL_SIZE, loc="right")
    else:
        by_member.set_axis_off()
        by_member.text(
            0.5,
            0.5,
            "No pictures in these days",
            color=MUTED,
            fontsize=LABEL_SIZE,
            ha="center",
            transform=by_member.transAxes,
        )
    return figure


def render_chart(report: UsageReport) -> bytes:
    """The chart as a PNG of WIDTH x HEIGHT pixels. Blocking: run it in a thread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    with _drawing:
        figure = chart_figure(report)
        FigureCanvasAgg(figure)
        buffer = BytesIO()
        figure.savefig(buffer, format="png", facecolor=BACKGROUND, metadata={"Software": None})
    return buffer.getvalue()


def _style(axes: Axes) -> None:
    axes.set_facecolor(BACKGROUND)
    axes.set_axisbelow(True)
    axes.tick_params(colors=MUTED, labelsize=TICK_SIZE)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        axes.spines[side].set_color(GRID)


def _short(name: str, limit: int = 12) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
