"""Generate samples into a folder with a manifest that ``mixstudio eval`` reads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from studio.guidance import Guidance, default_guidance
from studio.io import atomic_dir, check_output_dir, write_png, write_wav
from studio.manifest import Manifest, ManifestItem, write_manifest
from studio.models.zoo import EMBEDDED
from studio.pipelines import load_pipeline
from studio.pipelines.base import MAX_STEPS, SCHEDULERS
from studio.pipelines.evaluation import generate_batch
from studio.plots import image_grid, spectrogram_grid
from studio.worlds import Prompt, get_world

MAX_SAMPLES = 256
DEFAULT_WORLD = {"image": "shapes", "audio": "synth"}


@dataclass(kw_only=True)
class GenerateRequest:
    """One ``mixstudio generate`` call.

    Attributes:
        modality: ``image`` or ``audio``.
        prompts: the prompts (each gets ``n`` samples).
        n: samples per prompt.
        model: embedded name, folder or hub id.
        negative_prompt: the unconditional branch's prompt.
        steps, guidance, seed, scheduler: sampling settings (sample ``i`` of prompt ``p`` uses ``seed + 1000p + i``;
            guidance None: :func:`studio.guidance.default_guidance` of the modality).
        guidance_rescale, guidance_interval: see :class:`studio.guidance.Guidance` (defaults: off, every step).
        audio_length_in_s: clip length (music).
        out: output folder (written atomically).
        world: the world whose judges score the folder (default: the embedded model's, else by modality).
        adapter: an adapter file (``mixstudio train finetune`` writes ``RUN/adapter.safetensors``) to apply.
        adapter_scale: its strength (orthogonal adapters stay orthogonal at any strength).
    """

    modality: str
    prompts: list[str]
    n: int = 1
    model: str = ""
    negative_prompt: str | None = None
    steps: int = 25
    guidance: float | None = None
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    scheduler: str | None = None
    audio_length_in_s: float | None = None
    out: Path = Path("out")
    world: str | None = None
    adapter: Path | None = None
    adapter_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise ValueError("prompt is empty; give a text prompt such as 'a red circle'")
        if not 1 <= self.n * len(self.prompts) <= MAX_SAMPLES:
            raise ValueError(f"-n gives {self.n * len(self.prompts)} samples; allowed 1 to {MAX_SAMPLES}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"--steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if self.guidance is None:
            self.guidance = default_guidance(self.modality)
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"--guidance must be a finite number >= 0 (1 = no guidance), got {self.guidance}")
        try:
            Guidance(self.guidance, self.guidance_rescale, self.guidance_interval)
        except ValueError as error:
            raise ValueError(str(error).replace("guidance_", "--guidance-", 1)) from None
        self.guidance_interval = tuple(float(x) for x in self.guidance_interval)
        if not math.isfinite(self.adapter_scale):
            raise ValueError(f"--adapter-scale must be a finite number, got {self.adapter_scale}")
        if self.adapter is not None and not Path(self.adapter).is_file():
            raise ValueError(f"--adapter {str(self.adapter)!r} is not a file; pass RUN_DIR/adapter.safetensors")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"--scheduler {self.scheduler!r} is unknown; use one of {sorted(SCHEDULERS)}")
        self.model = self.model or DEFAULT_WORLD[self.modality]
        self.world = self.world or model_world(self.model, self.modality)
        check_output_dir(self.out)


def generate_to_folder(request: GenerateRequest, batch_size: int = 16, progress: bool = True) -> Path:
    """Generate every (prompt, sample) of ``request`` and write files, ``grid.png`` and ``manifest.json``."""
    world = get_world(request.world)
    pipe = load_pipeline(request.model, request.modality, scheduler=request.scheduler)
    if request.adapter is not None:
        from studio.adapters import load_adapter, set_adapter_scale

        load_adapter(pipe.unet, request.adapter, name="adapter", base_model_id=request.model)
        set_adapter_scale(pipe.unet, "adapter", request.adapter_scale)
    jobs = [(p, request.seed + 1000 * i + k) for i, p in enumerate(request.prompts) for k in range(request.n)]
    bar = tqdm(total=len(jobs) * request.steps, desc=f"generate {request.modality}", unit="step", disable=not progress)

    def tick(pipe, step, t, tensors):
        bar.update(len(tensors["latents"]))
        return tensors

    kwargs = {
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance,
        "guidance_rescale": request.guidance_rescale,
        "guidance_interval": request.guidance_interval,
        "negative_prompt": request.negative_prompt,
        "callback_on_step_end": tick,
    }
    if request.modality == "audio" and request.audio_length_in_s:
        kwargs["audio_length_in_s"] = request.audio_length_in_s
    samples = []
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b : b + batch_size]
        samples += generate_batch(pipe, [p for p, _ in chunk], [s for _, s in chunk], **kwargs)
    bar.close()
    return write_generated(request, world, jobs, samples)


def write_generated(request: GenerateRequest, world, jobs, samples) -> Path:
    items = []
    with atomic_dir(request.out) as tmp:
        for i, ((prompt, seed), data) in enumerate(zip(jobs, samples, strict=True)):
            name = f"{i:04d}.png" if request.modality == "image" else f"{i:04d}.wav"
            if request.modality == "image":
                write_png(tmp / name, data)
            else:
                write_wav(tmp / name, data, world.SAMPLE_RATE)
            items.append(ManifestItem(file=name, prompt=prompt, seed=seed))
        grid = image_grid(samples[:64]) if request.modality == "image" else spectrogram_grid(samples[:16], 16000)
        write_png(tmp / "grid.png", grid)
        settings = {
            "model": request.model,
            "steps": request.steps,
            "guidance": request.guidance,
            "guidance_rescale": request.guidance_rescale,
            "guidance_interval": list(request.guidance_interval),
            "negative_prompt": request.negative_prompt,
            "scheduler": request.scheduler or "saved",
            "seed": request.seed,
            "n": request.n,
            "audio_length_in_s": request.audio_length_in_s,
            "adapter": None if request.adapter is None else str(request.adapter),
            "adapter_scale": request.adapter_scale,
        }
        write_manifest(
            tmp,
            Manifest(world=world.name, modality=world.modality, items=items, meta={"source": "generate", **settings}),
        )
    return request.out


def model_world(model: str, modality: str) -> str:
    """The world whose prompts and judges go with ``model``: an embedded model's own, else the modality's."""
    return EMBEDDED[model].world if model in EMBEDDED else DEFAULT_WORLD[modality]


def eval_prompt_texts(world_name: str) -> list[str]:
    """The held-out evaluation prompts of a world (``--prompt-set eval``)."""
    prompts: list[Prompt] = get_world(world_name).eval_prompts()
    return [p.text for p in prompts]
