"""What a job's live status shows beyond RunPod's last word: its own place among the endpoint's waiting jobs,
RunPod's workers, when painting began, and estimates learned from the endpoint's finished jobs.

One `StatusBoard` per followed job, kept by the job runner (`bot/jobs.py`), which reads `/health` and draws
its `Outlook` with `bot/render.py`. No Discord and no I/O here; `now` is always passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.engine import JobUpdate, Progress
from bot.policy import GuildPolicy
from bot.polling import EndpointStats
from bot.runpod import Health, JobState


@dataclass(frozen=True)
class LinePlace:
    """A job's place in this server's fair queue (bot/policy.py), read at one moment, and what holds it there."""

    position: int  # 1 = next to go
    running: int  # the member's own jobs on RunPod now
    member_limit: int  # how many each member may run at once
    server_limit: int  # how many this server runs at once
    moved_back: bool = False  # later than the place shown before: others' turns come first

    @classmethod
    def of(cls, position: int, running: int, policy: GuildPolicy, shown: int | None) -> LinePlace:
        """The place, with the limits of `policy`; moved back when it is later than the one `shown` before (said,
        never silent)."""
        moved_back = shown is not None and position > shown
        return cls(position, running, policy.member_concurrent, policy.guild_concurrent, moved_back)

    @property
    def held_by_member_limit(self) -> bool:
        """Whether the member's own at-once limit holds it (rather than the server's)."""
        return self.running >= self.member_limit


@dataclass(frozen=True)
class Outlook:
    """What the bot knows about a job's wait and run beyond RunPod's status: what `/health` said, its own place
    among the endpoint's waiting jobs, and estimates learned from the endpoint's finished jobs. `now` is when it
    is rendered, so an estimate that has come due reads "any moment now" instead of "4 seconds ago"."""

    now: datetime
    waiting_since: datetime
    health: Health | None = None
    place: int | None = None  # 1 = next to start, counting the waiting jobs of this endpoint the bot knows
    own_waiting: int = 0  # RunPod's waiting jobs that are other parts of this same request
    expected_start: datetime | None = None
    painting_since: datetime | None = None
    expected_done: datetime | None = None
    pictures: tuple[int, int] | None = None  # (ready, asked for) of a request sent as several jobs
    parts_unsent: int = 0  # its parts not yet sent: they wait for a turn within the server's limits
    waiting: int | None = None  # RunPod's waiting jobs, this one and those ahead of it at least, its own not counted
    own_painting: int = 0  # RunPod's busy workers that are painting other parts of this same request
    progress: Progress | None = None  # of the whole request: a set's is 100% only once all its pictures are in


@dataclass
class StatusBoard:
    started: datetime  # the request
    update: JobUpdate | None = None  # RunPod's last word
    submitted_at: datetime | None = None  # by this process; after a restart the request time stands in
    painting_since: datetime | None = None
    progress_at: datetime | None = None  # when the worker's progress last changed
    place: int | None = None  # 1 = next to start; only ever goes down
    health: Health | None = None
    health_read_at: float = float("-inf")  # event-loop time
    pictures_ready: int | None = None  # of a request sent as several jobs: what its finished parts made
    parts_behind: int = 0  # its own parts after the one followed now: they wait on RunPod too, but not for it
    parts_unsent: int = 0  # its own parts not yet sent to RunPod: each waits for a turn in the server's limits
    parts_planned: int = 1  # RunPod jobs the request is sent as
    parts_ended: int = 0  # of them, followed to their end (the one followed now is the next)
    # Of its own parts behind the one followed now, what RunPod last said of them (read with /health): painting
    # on a worker, or waiting. Unknown (None) until read: then all of them are taken to wait.
    own_painting: int | None = None
    parts_done: set[str] = field(default_factory=set)  # those RunPod said were finished: not asked again

    def following(self, planned: int, ended: int, *, sent: int, ready: int | None) -> None:
        """The request's parts as the runner follows the next one: `planned` in all, `ended` followed to their end,
        `sent` to RunPod; `ready`, the pictures the ended ones made (None for a request of one part)."""
        self.parts_planned, self.parts_ended, self.pictures_ready = planned, ended, ready
        self.parts_behind, self.parts_unsent = sent - 1 - ended, planned - sent

    @property
    def sent_at(self) -> datetime:
        return self.submitted_at or self.started

    @property
    def waiting_on_runpod(self) -> bool:
        return self.update is not None and self.update.state is JobState.IN_QUEUE

    def saw(self, update: JobUpdate, now: datetime) -> None:
        """RunPod's news. Painting began when the job was sent plus RunPod's time in queue, or (when this
        process did not send it) when the bot first saw it painting."""
        if update.state is not JobState.IN_QUEUE and self.painting_since is None:
            begun = now
            if self.submitted_at is not None and update.delay_ms is not None:
                begun = min(now, self.submitted_at + timedelta(milliseconds=update.delay_ms))
            self.painting_since = begun
        if update.progress is not None and (self.update is None or update.progress != self.update.progress):
            self.progress_at = now
        self.update = update

    def health_due(self, loop_time: float, interval: float) -> bool:
        """Whether to read `/health` again: only while waiting, not during an outage, at most every `interval`."""
        update = self.update
        if update is None or update.state is not JobState.IN_QUEUE or update.unanswered:
            return False
        return loop_time - self.health_read_at >= interval

    def move_up(self, others: Iterable[StatusBoard]) -> None:
        """Its place among the waiting jobs of its endpoint this process follows (`others`): those sent earlier and
        still waiting at their last poll are ahead. It only ever goes down: jobs ahead leave, new ones join behind.
        (RunPod's count of waiting jobs cannot correct it: one `/health` answer serves many jobs for a few seconds,
        and may be older than this job.)"""
        place = 1 + sum(1 for other in others if other.waiting_on_runpod and other.sent_at < self.sent_at)
        self.place = place if self.place is None else min(place, self.place)

    def _expected_done(self, typical_run: float | None) -> datetime | None:
        """When painting should end: from the worker's own progress once it says enough (as of when it said it,
        so the estimate holds still between its reports), else from how long this endpoint's runs took."""
        since, update = self.painting_since, self.update
        assert since is not None
        assert update is not None
        fraction = update.progress.fraction if update.progress is not None else None
        if fraction is not None and fraction >= 0.1 and self.progress_at is not None:
            return since + (self.progress_at - since) / fraction
        if typical_run is not None:
            return since + timedelta(seconds=typical_run)
        return None

    def _progress(self, asked: int) -> Progress | None:
        """The request's progress: a set's part counts for its share, and it never reads 100% while pictures are
        still to come (the worker's 100% is not its pictures yet)."""
        progress = self.update.progress if self.update is not None else None
        if progress is None or progress.fraction is None or self.parts_planned <= 1:
            return progress
        fraction = (self.parts_ended + progress.fraction) / self.parts_planned
        if (self.pictures_ready or 0) < asked:
            fraction = min(fraction, 0.99)
        return Progress(progress.text, fraction)

    def outlook(self, now: datetime, stats: EndpointStats, asked: int) -> Outlook:
        """What the status shows, read at one moment from one board, so its numbers cannot disagree."""
        expected_start = expected_done = None
        if self.waiting_on_runpod:
            if stats.typical_wait is not None:
                expected_start = self.sent_at + timedelta(seconds=stats.typical_wait)
        elif self.painting_since is not None and self.update is not None:
            expected_done = self._expected_done(stats.typical_run)
        own_painting = min(self.own_painting or 0, self.parts_behind)
        own_waiting = self.parts_behind - own_painting  # RunPod counts these among its waiting jobs
        waiting = None
        if self.place is not None:
            waiting = max(self.place, (self.health.in_queue if self.health else 0) - own_waiting)
        return Outlook(
            now=now,
            waiting_since=self.started,
            health=self.health,
            place=self.place,
            own_waiting=own_waiting,
            expected_start=expected_start,
            painting_since=self.painting_since,
            expected_done=expected_done,
            pictures=(self.pictures_ready, asked) if self.pictures_ready is not None else None,
            parts_unsent=self.parts_unsent,
            waiting=waiting,
            own_painting=own_painting,
            progress=self._progress(asked),
        )
