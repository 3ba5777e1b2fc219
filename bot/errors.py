"""Domain errors. Each one carries a message a member or operator can act on, never a traceback."""

from __future__ import annotations

from bot.text import size_text


class BotError(Exception):
    """Base of every error this project raises on purpose; `str()` is safe to show to a user."""

    advice: str = ""  # what the member or admin can do about it

    @property
    def explanation(self) -> str:
        """What happened, then what to do: the whole message a member sees."""
        return f"{self} {self.advice}".strip()

    @property
    def for_members(self) -> str:
        """What a channel is told: the explanation, unless it is in words only an operator reads."""
        return self.explanation


class ConfigError(BotError):
    """A missing or malformed setting; the message names the variable."""


# --- RunPod API ---------------------------------------------------------------------------------


class RunPodError(BotError):
    """Something went wrong talking to RunPod."""


class RunPodAuthError(RunPodError):
    advice = "Ask a server admin to check the RunPod key with /runpod setup."

    def __init__(self) -> None:
        super().__init__("RunPod refused the API key (401). Check that the key is valid and has access.")


class RunPodNotFound(RunPodError):
    """404: the endpoint id is wrong, or the job is unknown or past RunPod's retention."""

    advice = "Ask a server admin to check the endpoint id with /runpod setup."


class RunPodRateLimited(RunPodError):
    def __init__(self) -> None:
        super().__init__("RunPod kept answering 429 (rate limited); try again in a minute.")


class RunPodUnavailable(RunPodError):
    """5xx, connection failures and timeouts that outlasted the retries."""

    advice = "Try again in a few minutes."


class RunPodBadResponse(RunPodError):
    """A body that is not JSON, or JSON of the wrong shape."""

    advice = "Try again in a few minutes."


class RunPodRejected(RunPodError):
    """400 and other 4xx: RunPod refused the request itself (bad input)."""


class RunPodUnsupported(RunPodError):
    """What RunPod's local test server does not offer (cancel, health): said, never tried."""


class RunPodAnswerRefused(RunPodBadResponse):
    """An answer refused on sight: too large to read, or JSON nested too deep or made of too many values for a
    worker's output. RunPod would send the same answer again, so it is never asked for again: it ends the job."""

    advice = "Ask a server admin to check the endpoint's worker: its output is not what image workers send."

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(f"RunPod's answer to /{operation} {reason}.")
        self.operation = operation
        self.reason = reason  # "is over 64 MB, so it was not read": what the engine tells the member


class RunPodAnswerTooLarge(RunPodAnswerRefused):
    """An answer over the client's cap (`RunPodClient.max_answer_bytes`), left unread."""

    def __init__(self, operation: str, limit: int) -> None:
        super().__init__(operation, f"is over {size_text(limit)}, so it was not read")
        self.limit = limit


# --- job outcomes ---------------------------------------------------------------------------------


class JobError(BotError):
    """A job ended without pictures."""

    def __init__(self, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


# What a member is told when the worker could not fetch or open the picture an image job starts from.
START_UNREAD = "The worker could not read the picture to start from."
# How workers say so in their own words: Pillow on bytes that are no picture (worker-sdxl opens whatever its URL
# answered: `cannot identify image file <_io.BytesIO object at 0x...>`), diffusers' `load_image` on an address it
# cannot fetch ("Incorrect path or url, URLs must start with http:// or https://").
_START_UNREAD_SIGNS = ("cannot identify image file", "unidentifiedimageerror", "incorrect path or url")


class JobFailed(JobError):
    """RunPod reported FAILED; the message is the worker's own error text (for Info, logs and the terminal),
    and `for_members` says it in a member's words."""

    advice = "Try again, perhaps with a different prompt or settings."

    @property
    def for_members(self) -> str:
        text = str(self).lower()
        if any(sign in text for sign in _START_UNREAD_SIGNS):  # the worker's words, with an object's address in them
            return START_UNREAD
        if "out of memory" in text or "outofmemory" in text:
            what = "The GPU ran out of memory painting this. Try a smaller size or fewer pictures."
        else:
            what = "The worker stopped with an error before the picture was done. Press Retry to try again."
        return f"{what} If it keeps happening, ask a server admin: the worker's own words are under Info."


class StartPictureUnread(JobFailed):
    """An image job whose worker painted from its text alone: the Stable Diffusion v1 worker does so, saying
    nothing, when it cannot fetch the picture to start from (docs/image-to-image.md), and a picture of another size
    than the start's gives it away. The message says what the bot saw, for Info."""

    @property
    def for_members(self) -> str:
        return START_UNREAD


class JobCancelled(JobError):
    pass


class JobTimedOut(JobError):
    """RunPod reported TIMED_OUT, or our own deadline passed (then the job was cancelled)."""


class JobExpired(JobError):
    """The job is gone from RunPod (404): its result outlived the 30-minute retention or its TTL."""

    advice = "Run /imagine again."


class OutputError(JobError):
    """The job completed but its output held no usable picture."""

    advice = "Ask a server admin to check the endpoint's worker and its settings."
