"""Worker presets: RunPod image workers disagree on input names, so each endpoint names its worker.

Output parsing needs no preset (see `bot.images`); only the `input` we send differs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.params import GenerationParams, InvalidParams

Builder = Callable[[GenerationParams, int, int, Any], dict[str, Any]]


@dataclass(frozen=True)
class WorkerPreset:
    name: str
    description: str
    base_side: int  # the model's native square size; other ratios keep about the same area
    max_count: int  # images one job can make
    build: Builder
    sides: tuple[int, ...] | None = None  # the only sizes the worker accepts, if it restricts them

    def size(self, params: GenerationParams) -> tuple[int, int]:
        area = self.base_side**2
        width, height = math.sqrt(area * params.ratio), math.sqrt(area / params.ratio)
        return self._snap(width), self._snap(height)

    def _snap(self, side: float) -> int:
        if self.sides:
            return min(self.sides, key=lambda allowed: abs(allowed - side))
        return max(64, round(side / 64) * 64)

    def build_input(self, params: GenerationParams, workflow: Any = None) -> dict[str, Any]:
        """The `input` object for POST /run. `params` must carry a seed (`params.with_seed()`)."""
        if params.seed is None:
            raise ValueError("build_input needs a concrete seed")
        if params.count > self.max_count:
            raise InvalidParams(f"This endpoint's worker ({self.name}) makes at most {self.max_count} images per job.")
        width, height = self.size(params)
        return self.build(params, width, height, workflow)


def _named(steps: str, guidance: str, count: str, default_steps: int, default_guidance: float) -> Builder:
    """A builder for the diffusers-style workers: the same parameters under the worker's own names."""

    def build(params: GenerationParams, width: int, height: int, _: Any) -> dict[str, Any]:
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
        return {key: value for key, value in values.items() if value is not None}

    return build


_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
COMFY_PLACEHOLDERS = ("prompt", "negative_prompt", "width", "height", "seed", "steps", "guidance", "count")


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
    return workflow


def _comfyui(params: GenerationParams, width: int, height: int, workflow: Any) -> dict[str, Any]:
    if not isinstance(workflow, dict):
        raise InvalidParams("This endpoint uses ComfyUI but no workflow template is configured for it.")
    values: dict[str, Any] = {
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt or "",
        "width": width,
        "height": height,
        "seed": params.seed,
        "steps": params.steps or 25,
        "guidance": params.guidance if params.guidance is not None else 7.0,
        "count": params.count,
    }

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

    return {"workflow": fill(workflow)}


PRESETS: dict[str, WorkerPreset] = {
    preset.name: preset
    for preset in (
        WorkerPreset(
            "sdxl",
            "worker-sdxl (SDXL 1.0 with refiner)",
            1024,
            2,
            _named("num_inference_steps", "guidance_scale", "num_images", 25, 7.5),
        ),
        WorkerPreset(
            "a1111",
            "worker-a1111 (Automatic1111 txt2img)",
            1024,
            4,
            _named("steps", "cfg_scale", "batch_size", 25, 7.0),
        ),
        WorkerPreset(
            "sd15",
            "Stable Diffusion v1 quick deploy",
            512,
            4,
            _named("num_inference_steps", "guidance_scale", "num_outputs", 30, 7.5),
            sides=(128, 256, 384, 448, 512, 576, 640, 704, 768),
        ),
        WorkerPreset("comfyui", "worker-comfyui (your workflow template)", 1024, 4, _comfyui),
    )
}
