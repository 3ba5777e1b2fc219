"""Worker presets: RunPod image workers disagree on input names, so each endpoint names its worker.

Output parsing needs no preset (see `bot.images`); only the `input` we send differs.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bot.outpaint import image_size, make_mask
from bot.params import DEFAULT_STRENGTH, MAX_SEED, UPSCALE_STRENGTH, GenerationParams, InvalidParams
from bot.text import plural


@dataclass(frozen=True)
class StartImage:
    """The picture an image-to-image job starts from, as a builder needs it."""

    url: str
    strength: float
    data: bytes | None = None  # the picture's bytes, for workers that take base64 rather than fetch the URL


_IMAGE_PROBE = GenerationParams("probe", image_url="https://example.com/probe.png")

Builder = Callable[[GenerationParams, int, int, Any, StartImage | None], dict[str, Any]]
Check = Callable[[GenerationParams, Any], None]


def start_strength(params: GenerationParams) -> float:
    """The strength an image job runs at: the member's, else the upscale or the variation default."""
    if params.strength is not None:
        return params.strength
    return UPSCALE_STRENGTH if params.upscale else DEFAULT_STRENGTH


@dataclass(frozen=True)
class SentNumbers:
    """The numbers a job's input carries, where the member left them to the worker: what its Info shows."""

    steps: int | None
    guidance: float | None
    width: int
    height: int


@dataclass(frozen=True)
class WorkerPreset:
    name: str
    description: str
    base_side: int  # the model's native square size; other ratios keep about the same area
    max_count: int  # images one job can make
    build: Builder
    sides: tuple[int, ...] | None = None  # the only sizes the worker accepts, if it restricts them
    # How the worker takes a picture to start from: it fetches a URL, or it wants the bytes in base64.
    # None: it cannot start from one (no Vary/Upscale buttons, `/imagine image:` refused).
    image_input: Literal["url", "base64"] | None = None
    max_image_count: int | None = None  # images one image-to-image job makes, when fewer than max_count
    # The most pixels of a picture to start from that the worker takes (docs/image-to-image.md): a larger one is
    # sent scaled down, an upscale is enlarged up to it. By default a 2x upscale of a 1024x1024 picture.
    max_start_pixels: int = 2048 * 2048
    check: Check | None = None  # the preset's own refusals (e.g. a ComfyUI template unfit for the job)
    # Its image-to-image path paints at the start picture's size, and a start it cannot fetch silently becomes a
    # text-to-image job at `width`/`height` (the Stable Diffusion v1 worker, docs/image-to-image.md): the size of
    # what comes back tells the two apart.
    paints_at_start_size: bool = False
    # What its builder sends when the member chose none (the same constants it is built with); None: unknown.
    default_steps: int | None = None
    default_guidance: float | None = None
    image_default_steps: int | None = None  # the steps of its image-to-image path, when they differ
    # Whether its workflow template may say where to paint outside a picture (Zoom Out, Pan): only a template
    # with {{image}} and {{mask}} then does (`paints_outside`).
    takes_mask: bool = False

    def sent_numbers(self, params: GenerationParams) -> SentNumbers:
        """The steps, guidance and size in pixels a job with `params` is sent with."""
        steps = params.steps
        if steps is None:
            image_path = params.image_url is not None and self.image_default_steps is not None
            steps = self.image_default_steps if image_path else self.default_steps
        guidance = params.guidance if params.guidance is not None else self.default_guidance
        return SentNumbers(steps, guidance, *self.job_size(params))

    @property
    def can_start_from_image(self) -> bool:
        return self.image_input is not None

    def max_count_for(self, params: GenerationParams) -> int:
        """Images one job can make for these params (worker-sdxl's image-to-image path makes one)."""
        if params.image_url is not None and self.max_image_count is not None:
            return self.max_image_count
        return self.max_count

    def parts(self, params: GenerationParams) -> list[GenerationParams]:
        """A request as the RunPod jobs that make it: one, or several when the worker makes fewer pictures per job
        than asked (worker-sdxl makes 2, and 1 from an image). Each part has its own seed, the request's plus the
        pictures before it, so a set never repeats a picture and stays reproducible. `params` must carry a seed."""
        if params.seed is None:
            raise ValueError("parts needs a concrete seed")
        most, parts, done = self.max_count_for(params), [], 0
        while done < params.count:
            count = min(most, params.count - done)
            parts.append(dataclasses.replace(params, count=count, seed=(params.seed + done) % (MAX_SEED + 1)))
            done += count
        return parts

    def size(self, params: GenerationParams) -> tuple[int, int]:
        area = self.base_side**2
        width, height = math.sqrt(area * params.ratio), math.sqrt(area / params.ratio)
        return self._snap(width), self._snap(height)

    def job_size(self, params: GenerationParams) -> tuple[int, int]:
        """The width and height sent: `size`, doubled for an upscale (within the worker's allowed sides)."""
        width, height = self.size(params)
        if not params.upscale:
            return width, height
        factor = 2.0
        if self.sides:  # as large as allowed, keeping the shape rather than squashing both sides to the maximum
            factor = min(factor, max(self.sides) / max(width, height))
        return self._snap(width * factor), self._snap(height * factor)

    def _snap(self, side: float) -> int:
        if self.sides:
            return min(self.sides, key=lambda allowed: abs(allowed - side))
        return max(64, round(side / 64) * 64)

    def refuse(self, params: GenerationParams, workflow: Any = None) -> None:
        """Raise InvalidParams if this worker cannot run `params` at all; needs no seed and no image bytes
        (preflight). How many pictures one job makes is not a refusal: a request runs as `parts`."""
        if params.image_url is not None and not self.can_start_from_image:
            raise InvalidParams(f"This server's worker ({self.name}) cannot start from a picture.")
        if params.outpaint is not None and not self.takes_mask:
            raise InvalidParams(f"This server's worker ({self.name}) cannot paint outside a picture (Zoom Out, Pan).")
        if self.check is not None:
            self.check(params, workflow)

    def _check_count(self, params: GenerationParams) -> None:
        """One job's count, for whoever sends a job directly rather than as `parts` (the CLI)."""
        most = self.max_count_for(params)
        if params.count <= most:
            return
        if most < self.max_count:
            pictures = plural(most, "picture")
            raise InvalidParams(
                f"This endpoint's worker ({self.name}) makes at most {pictures} per job when it starts from a picture."
            )
        raise InvalidParams(f"This endpoint's worker ({self.name}) makes at most {plural(most, 'picture')} per job.")

    @staticmethod
    def painted_size(start: tuple[int, int]) -> tuple[int, int]:
        """The size an image job from a picture of size `start` comes back at: diffusers' img2img rounds each side
        down to a multiple of 8 (`preprocess`)."""
        return start[0] - start[0] % 8, start[1] - start[1] % 8

    def painted_from_start(self, start: tuple[int, int], painted: tuple[int, int]) -> bool:
        """Whether a picture of size `painted` can be this worker's image job from a picture of size `start`:
        always, unless the worker `paints_at_start_size`."""
        return not self.paints_at_start_size or painted in (start, self.painted_size(start))

    def _unlike_start(self, start: tuple[int, int], width: int, height: int) -> tuple[int, int]:
        """`width`/`height` for an image job of a worker that `paints_at_start_size` (its image path ignores them),
        chosen unlike the start's size, so a picture painted from the text alone is told apart."""
        start_sizes = (start, self.painted_size(start))
        if (width, height) not in start_sizes:
            return width, height
        nearest_first = sorted(self.sides or (height - 64, height + 64), key=lambda side: (abs(side - height), side))
        return width, next(side for side in nearest_first if (width, side) not in start_sizes)

    def takes_image(self, workflow: Any = None) -> bool:
        """Whether image jobs can run on this endpoint, its workflow template included (Vary/Upscale, `image:`)."""
        if not self.can_start_from_image:
            return False
        try:
            self.refuse(_IMAGE_PROBE, workflow)
        except InvalidParams:
            return False
        return True

    def paints_outside(self, workflow: Any = None) -> bool:
        """Whether Zoom Out and Pan can run on this endpoint: a picture and a mask of where to paint go in."""
        return self.takes_mask and self.takes_image(workflow) and "mask" in workflow_placeholders(workflow)

    def build_input(
        self,
        params: GenerationParams,
        workflow: Any = None,
        image: bytes | None = None,
        start_size: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """The `input` object for POST /run. `params` must carry a seed (`params.with_seed()`).

        For an image job (`params.image_url`), a "base64" preset needs the picture's `image` bytes, downloaded
        (and, for an upscale, enlarged if wanted) by the caller; a "url" preset sends the URL and ignores them.
        `start_size` is the size of the picture sent, where known (`painted_from_start` checks the result).
        """
        if params.seed is None:
            raise ValueError("build_input needs a concrete seed")
        self.refuse(params, workflow)
        self._check_count(params)
        start = None
        if params.image_url is not None:
            if self.image_input == "base64" and image is None:
                raise ValueError(f"the {self.name} worker needs the image's bytes, not only its URL")
            start = StartImage(
                params.image_url, start_strength(params), image if self.image_input == "base64" else None
            )
        width, height = self.job_size(params)
        if start is not None and start_size is not None and self.paints_at_start_size:
            width, height = self._unlike_start(start_size, width, height)
        return self.build(params, width, height, workflow, start)


def _named(
    steps: str,
    guidance: str,
    count: str,
    default_steps: int,
    default_guidance: float,
    image: str | None = None,
    strength: str | None = None,
    image_steps: str | None = None,
    image_default_steps: int | None = None,
) -> Builder:
    """A builder for the diffusers-style workers: the same parameters under the worker's own names.

    `image` and `strength` name the URL and strength fields of its image-to-image path; `image_steps` the steps
    field that path reads, if not `steps`, and `image_default_steps` the worker's default for it.
    """
    path_default = image_default_steps or default_steps

    def build(params: GenerationParams, width: int, height: int, _: Any, start: StartImage | None) -> dict[str, Any]:
        values = {
            "prompt": params.prompt,
            "negative_prompt": params.negative_prompt,
            "width": width,
            "height": height,
            "seed": params.seed,
            steps: params.steps or default_steps,
            guidance: params.guidance if params.guidance is not None else default_guidance,
            count: params.count,
        }
        if start is not None and image is not None and strength is not None:
            values[image] = start.url
            values[strength] = _at_least_one_step(start.strength, params.steps or path_default)
            if image_steps is not None:
                values[image_steps] = params.steps  # left out (worker default) unless the member chose steps
        return {key: value for key, value in values.items() if value is not None}

    return build


def _at_least_one_step(strength: float, steps: int) -> float:
    """diffusers img2img runs int(steps * strength) steps and fails on none, so send at least enough for one."""
    least = 1 / steps
    while int(steps * least) < 1:  # 1/n * n can land just under 1.0
        least = math.nextafter(least, 1.0)
    return max(strength, least)


_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
COMFY_PLACEHOLDERS = (
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "seed",
    "steps",
    "guidance",
    "count",
    "image",  # the file name of the uploaded picture, for a LoadImage node
    "strength",  # how far to move from it, for a KSampler's denoise (1.0 in a text job: paint from noise)
    "mask",  # the file name of the uploaded mask (white: paint here), for Zoom Out and Pan (bot/outpaint.py)
)


def parse_workflow(text: str) -> dict[str, Any]:
    """Check an admin's ComfyUI workflow template once, when it is configured."""
    try:
        workflow = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidParams(f"The ComfyUI workflow is not valid JSON ({error.msg}, line {error.lineno}).") from None
    if not isinstance(workflow, dict) or not workflow:
        raise InvalidParams("The ComfyUI workflow must be a JSON object in ComfyUI's API format.")
    found = set(_PLACEHOLDER.findall(text))
    unknown = found - set(COMFY_PLACEHOLDERS)
    if unknown:
        raise InvalidParams(
            f"Unknown placeholder(s) {', '.join(sorted(unknown))}; use {', '.join(COMFY_PLACEHOLDERS)}."
        )
    if "prompt" not in found:
        raise InvalidParams("The ComfyUI workflow needs a {{prompt}} placeholder where the prompt goes.")
    if "mask" in found and "image" not in found:
        raise InvalidParams("The ComfyUI workflow has a {{mask}} but no {{image}} for it to mask.")
    return workflow


def workflow_placeholders(workflow: Any) -> set[str]:
    """The placeholder names a parsed workflow template uses."""
    return set(_PLACEHOLDER.findall(json.dumps(workflow)))


def _check_comfyui(params: GenerationParams, workflow: Any) -> None:
    if not isinstance(workflow, dict):
        raise InvalidParams("This endpoint uses ComfyUI but no workflow template is configured for it.")
    takes_image = "image" in workflow_placeholders(workflow)
    # A template either loads a picture or it does not; the other kind of job would silently lose its meaning.
    if params.image_url is not None and not takes_image:
        raise InvalidParams(
            "This server's ComfyUI workflow cannot start from an image: it has no {{image}} placeholder."
        )
    if params.image_url is None and takes_image:
        raise InvalidParams("This server's ComfyUI workflow starts from a picture: attach one with the image option.")
    if params.outpaint is not None and "mask" not in workflow_placeholders(workflow):
        raise InvalidParams(
            "This server's ComfyUI workflow cannot paint outside a picture: it has no {{mask}} placeholder."
        )


# ComfyUI lists only files with an image extension in LoadImage, so the upload's name must carry the right one.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"))


def comfy_image_name(image: bytes) -> str:
    """The file name the picture is uploaded under: named by its content, so jobs never clash on a worker."""
    extension = next((ext for magic, ext in _SIGNATURES if image.startswith(magic)), "png")
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        extension = "webp"
    return f"imagine-{hashlib.sha256(image).hexdigest()[:16]}.{extension}"


def _comfyui(
    params: GenerationParams, width: int, height: int, workflow: Any, start: StartImage | None
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt or "",
        "width": width,
        "height": height,
        "seed": params.seed,
        "steps": params.steps or COMFY_STEPS,
        "guidance": params.guidance if params.guidance is not None else COMFY_GUIDANCE,
        "count": params.count,
        "strength": start.strength if start is not None else 1.0,
        "mask": "",
    }
    images: list[dict[str, str]] = []
    if start is not None and start.data is not None:
        values["image"] = comfy_image_name(start.data)
        # raw base64, not a data URI: worker-comfyui before 5.x decodes the string as it comes
        images.append({"name": values["image"], "image": base64.b64encode(start.data).decode("ascii")})
        if "mask" in workflow_placeholders(workflow):  # blocking, like the base64: build_input runs in a thread
            canvas = image_size(start.data)
            mask = make_mask(canvas, params.outpaint)
            values["mask"] = comfy_image_name(mask)
            images.append({"name": values["mask"], "image": base64.b64encode(mask).decode("ascii")})
            if params.outpaint is not None:  # the canvas is the picture's size now
                values["width"], values["height"] = canvas

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: fill(value) for key, value in node.items()}
        if isinstance(node, list):
            return [fill(value) for value in node]
        if isinstance(node, str):
            whole = _PLACEHOLDER.fullmatch(node.strip())
            if whole:  # keep numbers numbers: "{{seed}}" becomes 42, not "42"
                return values[whole.group(1)]
            return _PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), node)
        return node

    job: dict[str, Any] = {"workflow": fill(workflow)}
    if images:
        job["images"] = images
    return job


# What each worker is sent when the member leaves steps and guidance to it.
SDXL_STEPS, SDXL_GUIDANCE = 25, 7.5
SDXL_IMAGE_STEPS = 50  # worker-sdxl's schemas.py: refiner_inference_steps defaults to 50
A1111_STEPS, A1111_GUIDANCE = 25, 7.0
SD15_STEPS, SD15_GUIDANCE = 30, 7.5
COMFY_STEPS, COMFY_GUIDANCE = 25, 7.0

PRESETS: dict[str, WorkerPreset] = {
    preset.name: preset
    for preset in (
        WorkerPreset(
            "sdxl",
            "worker-sdxl (SDXL 1.0 with refiner)",
            1024,
            2,
            # handler.py: with image_url only the refiner runs, on the fetched picture at its own size, one image
            _named(
                "num_inference_steps",
                "guidance_scale",
                "num_images",
                SDXL_STEPS,
                SDXL_GUIDANCE,
                image="image_url",
                strength="strength",
                image_steps="refiner_inference_steps",
                image_default_steps=SDXL_IMAGE_STEPS,
            ),
            image_input="url",
            max_image_count=1,
            default_steps=SDXL_STEPS,
            default_guidance=SDXL_GUIDANCE,
            image_default_steps=SDXL_IMAGE_STEPS,
        ),
        WorkerPreset(
            "a1111",
            "worker-a1111 (Automatic1111 txt2img)",
            1024,
            4,
            _named("steps", "cfg_scale", "batch_size", A1111_STEPS, A1111_GUIDANCE),
            image_input=None,  # the stock handler posts to /sdapi/v1/txt2img only
            default_steps=A1111_STEPS,
            default_guidance=A1111_GUIDANCE,
        ),
        WorkerPreset(
            "sd15",
            "Stable Diffusion v1 quick deploy",
            512,
            4,
            _named(
                "num_inference_steps",
                "guidance_scale",
                "num_outputs",
                SD15_STEPS,
                SD15_GUIDANCE,
                image="init_image",
                strength="prompt_strength",
            ),
            sides=(128, 256, 384, 448, 512, 576, 640, 704, 768),
            image_input="url",  # rp_handler.py downloads init_image over HTTP(S)
            max_start_pixels=1024 * 768,  # a larger init image may run out of GPU memory (docs/image-to-image.md)
            paints_at_start_size=True,  # and paints text-to-image, saying nothing, when that download fails
            default_steps=SD15_STEPS,
            default_guidance=SD15_GUIDANCE,
        ),
        WorkerPreset(
            "comfyui",
            "worker-comfyui (your workflow template)",
            1024,
            4,
            _comfyui,
            image_input="base64",  # input.images: uploaded into ComfyUI's input folder before the workflow runs
            check=_check_comfyui,
            default_steps=COMFY_STEPS,
            default_guidance=COMFY_GUIDANCE,
            takes_mask=True,
        ),
    )
}
