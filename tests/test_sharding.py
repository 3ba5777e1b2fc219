"""Two bot processes, each on its own shard of two, sharing one database: a restart of one touches
nothing in the other, and each resumes only its own shards' jobs."""

from __future__ import annotations

import signal

from doubles import outputs
from doubles.harness import png_for
from doubles.runpod import Script
from tests.conftest import SHARD0_CHANNEL, SHARD0_GUILD, SHARD1_GUILD
from tests.processes import ready, start_bot
from tests.test_restart import assert_delivered_once, deliveries, title


async def test_two_processes_two_shards_one_database(tmp_path, sharded_double, runpod, database_url):
    assert (SHARD0_GUILD >> 22) % 2 == 0
    assert (SHARD1_GUILD >> 22) % 2 == 1
    runpod.default_script = lambda job_input: Script(
        queue_s=3, run_s=0.3, output=outputs.sdxl(png_for(job_input["prompt"]))
    )
    env = {"SHARD_COUNT": "2", "DATABASE_URL": database_url}
    for folder in ("zero", "one"):
        (tmp_path / folder).mkdir()
    zero = await start_bot(tmp_path / "zero", sharded_double, runpod, SHARD_IDS="0", **env)
    await ready(sharded_double, connections=1)  # one at a time: two processes migrating one SQLite file would race
    one = await start_bot(tmp_path / "one", sharded_double, runpod, SHARD_IDS="1", **env)
    await ready(sharded_double, connections=2)
    assert sorted(conn.shard for conn in sharded_double.connections) == [(0, 2), (1, 2)]

    for_zero = sharded_double.slash(
        "imagine", {"prompt": "shard zero"}, guild_id=SHARD0_GUILD, channel_id=SHARD0_CHANNEL
    )
    for_one = sharded_double.slash("imagine", {"prompt": "shard one"})
    await sharded_double.send(for_zero)
    await sharded_double.send(for_one)
    await sharded_double.wait_for(
        lambda: title(sharded_double, for_zero) == title(sharded_double, for_one) == "⏳ In queue", timeout=10
    )
    # Each process received only its own shard's interaction.
    assert f"guild {SHARD0_GUILD}" in zero.log
    assert f"guild {SHARD1_GUILD}" not in zero.log
    assert f"guild {SHARD1_GUILD}" in one.log
    assert f"guild {SHARD0_GUILD}" not in one.log

    one.process.send_signal(signal.SIGKILL)
    await one.finish()
    restarted = await start_bot(tmp_path / "one", sharded_double, runpod, SHARD_IDS="1", **env)
    await assert_delivered_once(sharded_double, ["shard zero", "shard one"])
    assert zero.process.returncode is None  # never restarted
    assert "resuming 1 undelivered job(s)" in restarted.log  # only its own, not shard zero's
    assert f"guild {SHARD0_GUILD}" not in restarted.log
    assert len(runpod.jobs) == 2
    assert deliveries(sharded_double, "shard one") == [sharded_double.original_message(for_one.token).id]

    for bot in (zero, restarted):
        bot.process.send_signal(signal.SIGTERM)
        assert await bot.finish() == 0
