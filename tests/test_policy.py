"""Guild rules without Discord: the fair queue, quotas and moderation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.params import GenerationParams
from bot.policy import FairQueue, GuildPolicy, Refused, Usage, check_quota, check_size, moderate


async def test_the_fair_queue_admits_within_limits_and_serves_members_in_turn():
    queue = FairQueue()
    policy = GuildPolicy(member_concurrent=1, guild_concurrent=2, member_waiting=5)
    a1, a2, a3 = (queue.join(1, 100, policy) for _ in range(3))
    b1, b2 = (queue.join(1, 200, policy) for _ in range(2))
    c1 = queue.join(1, 300, policy)
    assert [t.admitted.done() for t in (a1, a2, a3, b1, b2, c1)] == [True, False, False, True, False, False]
    # Waiting, one per member per round: c1 (never served yet), then a2, b2, then a3.
    assert [queue.position(t) for t in (c1, a2, b2, a3)] == [1, 2, 3, 4]
    queue.leave(a1)  # a's slot frees, but c has waited longer for a first turn
    assert c1.admitted.done()
    assert not a2.admitted.done()
    queue.leave(b1)
    assert a2.admitted.done()
    assert [queue.position(t) for t in (b2, a3)] == [1, 2]


async def test_places_follow_every_change_of_the_queue():
    queue = FairQueue()
    policy = GuildPolicy(member_concurrent=1, guild_concurrent=1, member_waiting=5)
    running = queue.join(1, 100, policy)
    a2, a3 = queue.join(1, 100, policy), queue.join(1, 100, policy)
    b1, b2 = queue.join(1, 200, policy), queue.join(1, 200, policy)
    assert [queue.position(t) for t in (b1, a2, b2, a3)] == [1, 2, 3, 4]
    queue.leave(a2)  # a waiting job is cancelled: everyone behind it moves up
    assert [queue.position(t) for t in (b1, a3, b2)] == [1, 2, 3]
    c1 = queue.join(1, 300, policy)  # a newcomer goes before the member served last, and anyone's second
    assert [queue.position(t) for t in (b1, c1, a3, b2)] == [1, 2, 3, 4]
    queue.leave(running)  # b1 is admitted; c1 has not been served yet, so it comes first
    assert b1.admitted.done() and queue.position(b1) is None
    assert [queue.position(t) for t in (c1, a3, b2)] == [1, 2, 3]


async def test_a_member_cannot_pile_up_more_waiting_jobs_than_allowed():
    queue = FairQueue()
    policy = GuildPolicy(member_concurrent=1, member_waiting=1)
    queue.join(1, 100, policy)
    queue.join(1, 100, policy)
    with pytest.raises(Refused, match="already have 1 pictures waiting"):
        queue.join(1, 100, policy)
    queue.join(1, 200, policy)  # someone else is not affected


async def test_leaving_while_waiting_frees_the_place_and_guilds_are_separate():
    queue = FairQueue()
    policy = GuildPolicy(member_concurrent=1, guild_concurrent=1)
    first = queue.join(1, 100, policy)
    waiting = queue.join(1, 200, policy)
    other_guild = queue.join(2, 200, policy)
    assert other_guild.admitted.done()
    queue.leave(waiting)
    assert waiting.admitted.cancelled()
    queue.leave(first)
    assert queue.running(1, 100) == 0


NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("policy", "usage", "message"),
    [
        (GuildPolicy(member_daily=3), Usage(member_today=3), "your 3 pictures for today"),
        (GuildPolicy(member_daily=1), Usage(member_today=1), "your 1 picture for today"),
        (GuildPolicy(guild_daily_jobs=10), Usage(guild_today=10), "its 10 pictures for today"),
        (GuildPolicy(guild_daily_gpu_seconds=60), Usage(gpu_seconds_today=61.5), "today's GPU time"),
        (GuildPolicy(guild_monthly_jobs=100), Usage(guild_month=100), "for this month"),
        (GuildPolicy(guild_monthly_gpu_seconds=600), Usage(gpu_seconds_month=600), "this month's GPU time"),
    ],
)
def test_quotas_say_when_they_reset(policy, usage, message):
    with pytest.raises(Refused, match=message) as caught:
        check_quota(policy, usage, NOON)
    tomorrow, next_month = datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    assert tomorrow in caught.value.parts or next_month in caught.value.parts  # Discord draws it (render.explanation)
    assert "at 2026-11-23 00:00 UTC" in str(caught.value) or "at 2026-12-01 00:00 UTC" in str(caught.value)


@pytest.mark.parametrize(
    ("policy", "usage", "message"),
    [
        (
            GuildPolicy(member_daily=5),
            Usage(member_today=3),
            "You have 2 pictures left for today and you asked for 4: ask for 2 or fewer now, or for more at 2026-11-23",
        ),
        (
            GuildPolicy(guild_daily_jobs=10),
            Usage(guild_today=9),
            "This server has 1 picture left for today and you asked for 4: ask for 1 or fewer now, or for more at",
        ),
        (
            GuildPolicy(guild_monthly_jobs=100),
            Usage(guild_month=97),
            "This server has 3 pictures left for this month and you asked for 4: ask for 3 or fewer now",
        ),
    ],
)
def test_asking_for_more_pictures_than_are_left_says_how_many_are_left(policy, usage, message):
    with pytest.raises(Refused) as caught:
        check_quota(policy, usage, NOON, pictures=4)
    assert str(caught.value).startswith(message)


def test_asking_for_exactly_what_is_left_passes():
    check_quota(GuildPolicy(member_daily=5, guild_daily_jobs=10), Usage(member_today=1, guild_today=6), NOON, 4)
    with pytest.raises(Refused, match="1 picture left"):
        check_quota(GuildPolicy(member_daily=5), Usage(member_today=4), NOON, 2)


def test_no_limit_means_no_limit():
    check_quota(GuildPolicy(), Usage(member_today=10**6, guild_month=10**6, gpu_seconds_month=10**9), NOON)


def test_moderation_words_patterns_and_nsfw_only():
    policy = GuildPolicy(banned_words=("dragon",), banned_patterns=(r"\bv\d+\b",), nsfw_only_words=("gore",))
    with pytest.raises(Refused, match="does not allow “dragon”"):
        moderate(policy, GenerationParams("A DRAGON at sea"), nsfw_channel=True)
    moderate(policy, GenerationParams("snapdragons in a vase"), nsfw_channel=False)  # whole words only
    with pytest.raises(Refused, match="rules do not allow that prompt"):
        moderate(policy, GenerationParams("model v2 style"), nsfw_channel=True)
    with pytest.raises(Refused, match="only allowed in this server's NSFW channels"):
        moderate(policy, GenerationParams("a gore scene"), nsfw_channel=False)
    moderate(policy, GenerationParams("a gore scene"), nsfw_channel=True)


def test_size_limits():
    with pytest.raises(Refused, match="at most 2 picture"):
        check_size(GuildPolicy(max_count=2), GenerationParams("x", count=3))
    with pytest.raises(Refused, match="at most 30 steps"):
        check_size(GuildPolicy(max_steps=30), GenerationParams("x", steps=40))


def test_policy_round_trips_through_json_and_ignores_unknown_keys():
    policy = GuildPolicy(member_daily=5, banned_words=("x", "y"), gpu_price_per_second=0.00031)
    assert GuildPolicy.from_json(policy.to_json() | {"from_a_newer_version": 1}) == policy
    assert policy.cost(10_000) == pytest.approx(0.0031)
    assert GuildPolicy().cost(10_000) is None
