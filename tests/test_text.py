"""Text for people: one function each for numbers, plurals, dollars, sizes, moments and RunPod's health, and a
refusal's moment drawn as Discord's timestamp only on the Discord side."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot import render
from bot.policy import GuildPolicy, Refused, Usage, check_quota
from bot.runpod import Health
from bot.text import dollars, duration, health_text, moment, noun, plural, size_text
from cogs.admin import describe_health, price

NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
MIDNIGHT = int(datetime(2026, 11, 23, tzinfo=UTC).timestamp())
NEXT_MONTH = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("amount", "unit", "shown", "said"),
    [
        (1, "picture", None, "1 picture"),
        (0, "picture", None, "0 pictures"),
        (3600, "GPU second", None, "3,600 GPU seconds"),
        (1.5, "minute", None, "1.5 minutes"),
        (1.001, "minute", None, "1 minute"),  # reads as 1, so it is said as 1
        (0.96, "GPU second", "1", "1 GPU second"),  # rounded by the caller: the unit follows what is shown
    ],
)
def test_plural_follows_the_number_as_shown(amount, unit, shown, said):
    assert plural(amount, unit, shown) == said


def test_noun_alone():
    assert (noun(1, "job"), noun(2, "job"), noun(0, "job")) == ("job", "jobs", "jobs")


@pytest.mark.parametrize(
    ("amount", "places", "shown"),
    [
        (0, 2, "$0.00"),
        (0.0049, 2, "< $0.01"),
        (0.125, 2, "$0.12"),
        (1234.5, 2, "$1,234.50"),
        (0.0031, 4, "$0.0031"),
        (0.5, 4, "$0.50"),  # was "$0.5000" in Info, "$0.50" in the usage report
        (0.00001, 4, "< $0.0001"),  # was "$0.0000" in Info for a cost that is not nothing
        (0.00031, 6, "$0.00031"),
        (0.5, 6, "$0.50"),
    ],
)
def test_dollars_to_the_cent_or_finer(amount, places, shown):
    assert dollars(amount, places) == shown


def test_a_price_reads_as_it_did():
    assert (price(0.00031), price(0.5), price(0.0)) == ("$0.00031 per GPU second", "$0.50 per GPU second", "not set")


def test_sizes():
    assert (size_text(64 * 1024 * 1024), size_text(512 * 1024), size_text(25 * 1024 * 1024 - 1)) == (
        "64 MB",
        "512 KB",
        "25 MB",
    )


def test_health_reads_the_same_for_admins_and_operators():
    warm = Health(in_queue=2, in_progress=1, idle=1, ready=1, running=3, initializing=1, throttled=0)
    assert health_text(warm) == ("2 ready, 3 busy, 1 starting, 0 throttled", "2 in queue, 1 running")
    assert describe_health(warm) == "Workers: 2 ready, 3 busy, 1 starting, 0 throttled. Jobs: 2 in queue, 1 running."
    cold = Health(initializing=1, throttled=2)
    assert describe_health(cold) == (
        "Workers: 0 ready, 0 busy, 1 starting, 2 throttled (none warm: the first job waits for a cold start). "
        "Jobs: 0 in queue, 0 running."
    )
    assert render.describe_workers(warm) == "2 ready · 3 busy · 1 starting"
    assert render.describe_workers(cold) == "1 starting"
    assert render.describe_workers(Health()) == "none running yet"


@pytest.mark.parametrize(
    ("policy", "usage", "pictures", "plain", "member"),
    [
        (
            GuildPolicy(member_daily=2),
            Usage(member_today=2),
            1,
            "You have used your 2 pictures for today; you can make more at 2026-11-23 00:00 UTC.",
            f"You have used your 2 pictures for today; you can make more <t:{MIDNIGHT}:R>.",
        ),
        (
            GuildPolicy(guild_daily_gpu_seconds=60),
            Usage(gpu_seconds_today=61.5),
            1,
            "This server has used today's GPU time; more at 2026-11-23 00:00 UTC.",
            f"This server has used today's GPU time; more <t:{MIDNIGHT}:R>.",
        ),
        (
            GuildPolicy(guild_monthly_jobs=100),
            Usage(guild_month=97),
            4,
            "This server has 3 pictures left for this month and you asked for 4: ask for 3 or fewer now, or for "
            "more at 2026-12-01 00:00 UTC.",
            "This server has 3 pictures left for this month and you asked for 4: ask for 3 or fewer now, or for "
            f"more <t:{NEXT_MONTH}:R>.",
        ),
    ],
)
def test_a_quota_refusal_names_its_moment_plainly_and_discord_counts_it_down(policy, usage, pictures, plain, member):
    with pytest.raises(Refused) as refused:
        check_quota(policy, usage, NOON, pictures)
    assert str(refused.value) == refused.value.explanation == plain  # logs, and anything outside Discord
    assert render.explanation(refused.value) == render.for_members(refused.value) == member


def test_a_moment_in_plain_text_is_in_utc():
    assert moment(datetime(2026, 11, 23, tzinfo=UTC)) == "at 2026-11-23 00:00 UTC"


def test_other_errors_read_as_before_on_the_discord_side():
    from bot.errors import JobFailed

    failed = JobFailed("CUDA out of memory")
    assert render.explanation(failed) == failed.explanation
    assert render.for_members(failed) == failed.for_members
    assert render.explanation(Refused("This server's rules do not allow that prompt.")) == (
        "This server's rules do not allow that prompt."
    )


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0 s"), (0.4, "1 s"), (59.4, "59 s"), (59.9019, "1 min"), (60, "1 min"), (125, "2 min 5 s"),
     (900, "15 min"), (3600, "1 h"), (4860, "1 h 21 min"), (7199, "2 h")],
)  # fmt: skip
def test_durations_read_as_people_say_them_never_as_a_float(seconds, shown):
    assert duration(seconds) == shown
