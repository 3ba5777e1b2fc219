"""A guild's use of its GPU over the last 30 days: numbers from the ledger, and a chart drawn with Pillow."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from io import BytesIO

from PIL import Image, ImageDraw, ImageFont

from bot.policy import GuildPolicy
from bot.storage import JobRecord

DAYS = 30
TOP_MEMBERS = 8


@dataclass(frozen=True)
class MemberUse:
    name: str
    jobs: int
    gpu_seconds: float


@dataclass(frozen=True)
class UsageReport:
    days: tuple[date, ...]
    jobs_by_day: tuple[int, ...]
    gpu_seconds_by_day: tuple[float, ...]
    members: tuple[MemberUse, ...]  # most GPU time first
    total_jobs: int
    total_gpu_seconds: float
    not_counted: int  # failed and cancelled: free for the member, shown for the admin
    cost: float | None

    def summary(self) -> str:
        cost = f", about {dollars(self.cost)}" if self.cost is not None else ""
        lines = [
            f"Last {len(self.days)} days: {self.total_jobs} pictures, {self.total_gpu_seconds:.0f} GPU seconds{cost}.",
            f"Failed or cancelled (not counted): {self.not_counted}.",
        ]
        if self.members:
            top = ", ".join(f"{m.name} {m.jobs} ({m.gpu_seconds:.0f} s)" for m in self.members[:5])
            lines.append(f"Most active: {top}.")
        return "\n".join(lines)


def dollars(amount: float) -> str:
    """Cents as usual; a smaller amount to four places, so $0.0035 is not shown as $0.00."""
    return f"${amount:.2f}" if amount == 0 or amount >= 0.01 else f"${amount:.4f}"


def build_report(records: list[JobRecord], now: datetime, policy: GuildPolicy) -> UsageReport:
    first = (now - timedelta(days=DAYS - 1)).date()
    days = tuple(first + timedelta(days=offset) for offset in range(DAYS))
    jobs: dict[date, int] = defaultdict(int)
    seconds: dict[date, float] = defaultdict(float)
    by_member: dict[int, list[float]] = defaultdict(lambda: [0, 0.0])
    names: dict[int, str] = {}
    not_counted = 0
    for record in records:
        if record.created_at is None or record.created_at.date() < first:
            continue
        if not record.state.counted:
            not_counted += 1
            continue
        day, gpu = record.created_at.date(), (record.execution_ms or 0) / 1000
        jobs[day] += 1
        seconds[day] += gpu
        by_member[record.user_id][0] += 1
        by_member[record.user_id][1] += gpu
        names[record.user_id] = record.user_name
    members = sorted(
        (MemberUse(names[user], int(count), gpu) for user, (count, gpu) in by_member.items()),
        key=lambda member: (-member.gpu_seconds, -member.jobs, member.name),
    )
    total_gpu = sum(seconds.values())
    return UsageReport(
        days=days,
        jobs_by_day=tuple(jobs[day] for day in days),
        gpu_seconds_by_day=tuple(round(seconds[day], 3) for day in days),
        members=tuple(members),
        total_jobs=sum(jobs.values()),
        total_gpu_seconds=total_gpu,
        not_counted=not_counted,
        cost=total_gpu * policy.gpu_price_per_second if policy.gpu_price_per_second else None,
    )


WIDTH, HEIGHT = 900, 560
BAR = (88, 101, 242)
INK = (230, 230, 235)
MUTED = (150, 150, 160)
BACKGROUND = (43, 45, 49)


def render_chart(report: UsageReport) -> bytes:
    """Two panels: GPU seconds per day (bars, with job counts), and the members who used most. Blocking."""
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((20, 12), f"GPU seconds per day, last {len(report.days)} days", fill=INK, font=font)
    left, top, bottom, right = 50, 40, 300, WIDTH - 20
    peak = max(report.gpu_seconds_by_day, default=0) or 1
    slot = (right - left) / len(report.days)
    for index, (day, gpu, count) in enumerate(
        zip(report.days, report.gpu_seconds_by_day, report.jobs_by_day, strict=True)
    ):
        x0 = left + index * slot + 2
        height = (bottom - top) * gpu / peak
        if gpu:
            draw.rectangle((x0, bottom - height, x0 + slot - 4, bottom), fill=BAR)
        if count:
            draw.text((x0, bottom - height - 12), str(count), fill=INK, font=font)
        if index % 5 == 0:
            draw.text((x0, bottom + 4), day.strftime("%m-%d"), fill=MUTED, font=font)
    draw.line((left, bottom, right, bottom), fill=MUTED)
    draw.text((8, top), f"{peak:.0f}s", fill=MUTED, font=font)

    draw.text((20, 330), "By member (GPU seconds, pictures)", fill=INK, font=font)
    members = report.members[:TOP_MEMBERS]
    most = max((member.gpu_seconds for member in members), default=0) or 1
    for row, member in enumerate(members):
        y = 352 + row * 24
        draw.text((20, y + 4), member.name[:24], fill=INK, font=font)
        length = (WIDTH - 400) * member.gpu_seconds / most
        draw.rectangle((200, y, 200 + max(length, 1), y + 16), fill=BAR)
        draw.text((210 + length, y + 4), f"{member.gpu_seconds:.0f}s, {member.jobs}", fill=INK, font=font)
    buffer = BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
