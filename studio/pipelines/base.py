"""What the image and music pipelines share: prompt encoding, input checks, the guided denoising loop."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from diffusers.utils.torch_utils import randn_tensor

from studio.guidance import Guidance, guidance_embedding, split_guided, uses_guidance
from studio.models.text import encode_text, load_packaged_text_encoder

#: The one place a sampler name maps to its diffusers scheduler class.
SCHEDULERS: dict[str, type] = {
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "ddpm": DDPMScheduler,
    "euler": EulerDiscreteScheduler,
}
MAX_STEPS = 1000
MAX_BATCH = 64
#: The module a saved folder's ``pipeline.py`` is: ``model_index.json`` names ``["pipeline", "<class>"]``.
SHIM_MODULE = "pipeline"


class RefusedFolder(ValueError):
    """A pipeline folder this studio will not load (and says why): SDXL, or pipeline code of its own."""


def shim_source(cls: type) -> str:
    """The ``pipeline.py`` saved beside a studio pipeline: one import, nothing else (mixstudio checks it is exactly
    this before it lets diffusers import it)."""
    return (
        '"""Lets diffusers load this folder where mixstudio is installed:\n'
        'DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)."""\n\n'
        f"from {cls.__module__} import {cls.__name__}  # noqa: F401\n"
    )


def read_index(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A pipeline folder's ``model_index.json`` (None when the folder has none).

    Raises:
        ValueError: for an index that is not a JSON object.
    """
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(index)!r} is not valid JSON ({err}); re-save the pipeline") from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(index)!r} is not a JSON object; re-save the pipeline")
    return data


def class_name(index: dict[str, Any]) -> str:
    """The pipeline class an index names (``"StableDiffusionPipeline"``, or the class of ``["pipeline", name]``)."""
    name = index.get("_class_name")
    return str(name[-1]) if isinstance(name, (list, tuple)) and name else str(name)


def stable_diffusion_index(index: dict[str, Any]) -> dict[str, Any]:
    """A studio ``model_index.json`` of a Stable Diffusion layout, rewritten as a ``StableDiffusionPipeline``'s."""
    keep = ("_diffusers_version", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
    out = {key: index[key] for key in keep if key in index}
    out.update(
        _class_name="StableDiffusionPipeline",
        safety_checker=[None, None],
        feature_extractor=[None, None],
        image_encoder=[None, None],
        requires_safety_checker=False,
    )
    return out


def make_scheduler(name: str, config: Any) -> Any:
    """A scheduler of kind ``name`` built from another scheduler's config (same noise schedule).

    Raises:
        ValueError: naming the unknown sampler and the known ones.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; use one of {sorted(SCHEDULERS)}")
    if name == "euler" and config.get("beta_schedule") == "squaredcos_cap_v2":
        raise ValueError(
            "scheduler 'euler' diverges on this model's cosine schedule (terminal sigma ~1e4); use ddim or dpm++"
        )
    extra = {"algorithm_type": "dpmsolver++"} if name == "dpm++" else {}
    if name == "dpm++" and config.get("clip_sample"):
        # pixel-space models (clip_sample in their schedule): the cosine schedule's last alpha is ~0, so the
        # solver's x0-predictions explode at the first steps unless clipped like DDIM clips them; without
        # this, 25-step DPM++ returns pure noise on the shapes model
        extra.update(thresholding=True, sample_max_value=config.get("clip_sample_range", 1.0))
    if name == "dpm++" and config.get("beta_schedule") == "squaredcos_cap_v2":
        extra["lambda_min_clipped"] = -5.1  # diffusers' documented guard for log-SNR at the cosine schedule's end
    return SCHEDULERS[name].from_config(config, **extra)


StepCallback = Callable[[DiffusionPipeline, int, int, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class StudioDiffusionPipeline(DiffusionPipeline):
    """Base of :class:`StudioImagePipeline` and :class:`StudioMusicPipeline`.

    The text encoder is either a saved component (e.g. CLIP in a Stable Diffusion folder) or,
    for the embedded models, a *packaged* encoder named in the config
    (``text_encoder_package``). A packaged encoder is loaded from its Python package and is not
    written by ``save_pretrained``, so a shipped model folder holds only what was trained.
    """

    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def _attach_packaged_text_encoder(self, text_encoder: Any, text_encoder_package: str | None) -> None:
        self.register_to_config(text_encoder_package=text_encoder_package)
        self._shares_text_encoder = False
        if text_encoder is None and text_encoder_package is not None:
            encoder, tokenizer = load_packaged_text_encoder(text_encoder_package)
            # the config entries stay (None, None), so save_pretrained skips the shared encoder
            self.text_encoder, self.tokenizer = encoder, tokenizer
            self._shares_text_encoder = True

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> StudioDiffusionPipeline:
        """diffusers' ``from_pretrained``, refusing folders this class cannot load faithfully.

        A folder saved by :meth:`save_pretrained` names its class through ``pipeline.py``; diffusers imports that
        file only when it is exactly the one-line import this studio writes: a folder that carries code of its
        own is refused, never run.

        Raises:
            ValueError: for an SDXL pipeline (its second text encoder and size conditioning are not supported, so
                samples would be wrong) or a folder with pipeline code of its own.
        """
        folder = Path(pretrained_model_name_or_path)
        index = read_index(folder) if folder.is_dir() else None
        if index is not None:
            name = class_name(index)
            if name.startswith("StableDiffusionXL") or "text_encoder_2" in index:
                raise RefusedFolder(
                    f"{str(folder)!r} is an SDXL pipeline ({name}); its second text encoder and size conditioning "
                    "are not supported yet, so it is refused rather than sampled wrongly; use an SD 1.x/2.x model"
                )
            if isinstance(index.get("_class_name"), (list, tuple)):
                shim = folder / f"{SHIM_MODULE}.py"
                if not shim.is_file() or shim.read_text() != shim_source(cls):
                    raise RefusedFolder(
                        f"{str(folder)!r} carries pipeline code of its own ({shim.name}) or names another class "
                        f"than {cls.__name__}; mixstudio does not run it (load it with diffusers if you trust it)"
                    )
                kwargs["trust_remote_code"] = True  # the file is exactly this class's one-line import
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def to(self, *args: Any, **kwargs: Any) -> StudioDiffusionPipeline:
        """diffusers' ``to`` (device and dtype), touching only this pipeline.

        The packaged text encoder is one object shared by every pipeline of the process (loaded once); before it is
        moved or cast, this pipeline takes its own copy, so ``pipe.to(torch.bfloat16)`` never changes another
        pipeline's prompts.
        """
        if self._shares_text_encoder:
            self.text_encoder = copy.deepcopy(self.text_encoder)
            self._shares_text_encoder = False
        return super().to(*args, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``, in a folder diffusers itself can load back.

        A Stable Diffusion layout (a VAE and a saved CLIP text encoder) is saved as a ``StableDiffusionPipeline``,
        which plain diffusers loads. Any other (the embedded models: a packaged text encoder, pixel space or mels) is
        saved with ``pipeline.py``, a one-line import of this class, named in ``model_index.json`` as
        ``["pipeline", "<class>"]``: ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads it
        where mixstudio is installed (diffusers' convention for pipelines outside its package). The
        ``_name_or_path`` entries that record where the sources were loaded from (a path on the machine that saved
        them, meaningless and private anywhere else) are dropped.
        """
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        for path in folder.glob("**/*.json"):
            try:
                config = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
                path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        index = json.loads((folder / "model_index.json").read_text())
        if self.is_stable_diffusion_layout():
            index = stable_diffusion_index(index)
        else:
            index["_class_name"] = [SHIM_MODULE, type(self).__name__]
            (folder / f"{SHIM_MODULE}.py").write_text(shim_source(type(self)))
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def is_stable_diffusion_layout(self) -> bool:
        """Whether this pipeline holds what a ``StableDiffusionPipeline`` holds (a VAE, a saved CLIP encoder)."""
        vae = getattr(self, "vae", None)
        return vae is not None and not self._shares_text_encoder and self.config.text_encoder[0] == "transformers"

    @property
    def execution_device(self) -> torch.device:
        """Where the denoising runs: diffusers' hook-aware device (the accelerator under CPU offload)."""
        return self._execution_device

    # ---- step helpers ------------------------------------------------------------------------
    def check_common_inputs(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        num_inference_steps: int,
        guidance: Guidance,
        num_per_prompt: int,
    ) -> list[str]:
        """Validate the arguments every pipeline takes; returns the prompts as a list.

        Raises:
            ValueError: naming the bad argument, what it got and what is allowed.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError(f"prompt must be a non-empty string or list of strings, got {prompt!r}")
        negative_is_list = negative_prompt is not None and not isinstance(negative_prompt, str)
        if negative_is_list and len(negative_prompt) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negative_prompt)} entries for {len(prompts)} prompts")
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= MAX_STEPS:
            raise ValueError(
                f"num_inference_steps must be an integer in [1, {MAX_STEPS}], got {num_inference_steps!r}"
            )
        if guidance.rescale and self.guidance_conditioned:
            raise ValueError(
                "guidance_rescale needs the conditional prediction, which a guidance-conditioned student does not "
                "compute; use guidance_rescale=0 with this model"
            )
        if not num_per_prompt >= 1 or len(prompts) * num_per_prompt > MAX_BATCH:
            raise ValueError(f"batch of {len(prompts)} prompts x {num_per_prompt} must be between 1 and {MAX_BATCH}")
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline has no text encoder; pass text_encoder= and tokenizer= to from_pretrained")
        return prompts

    def check_callback_inputs(self, names: list[str] | None) -> list[str]:
        """The tensors a step callback receives: ``names`` (default ``["latents"]``), each declared in
        ``_callback_tensor_inputs``.

        Raises:
            ValueError: for a name the pipeline does not hand to callbacks.
        """
        names = list(names or ["latents"])
        unknown = sorted(set(names) - set(self._callback_tensor_inputs))
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {unknown} unknown; use {sorted(self._callback_tensor_inputs)}"
            )
        return names

    def encode_prompt(
        self,
        prompts: list[str],
        num_per_prompt: int,
        guidance_scale: float,
        negative_prompt: str | list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt embeddings ``(N, L, D)`` (and mask), with ``[uncond; cond]`` stacked when guiding."""
        device = self.execution_device
        texts = [p for p in prompts for _ in range(num_per_prompt)]
        embeds, mask = encode_text(self.text_encoder, self.tokenizer, texts, device)
        if not self.runs_cfg(guidance_scale):
            return embeds.to(self.unet.dtype), mask
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
        neg_texts = [n for n in negatives for _ in range(num_per_prompt)]
        neg_embeds, neg_mask = encode_text(self.text_encoder, self.tokenizer, neg_texts, device)
        embeds = torch.cat([neg_embeds, embeds]).to(self.unet.dtype)
        return embeds, None if mask is None else torch.cat([neg_mask, mask])

    def initial_noise(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """Noise of ``shape`` (or the given ``latents``, checked) scaled by the scheduler's ``init_noise_sigma``."""
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.execution_device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(self.execution_device, self.unet.dtype) * self.scheduler.init_noise_sigma

    def prepare_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        self.scheduler.set_timesteps(num_inference_steps, device=self.execution_device)
        return self.scheduler.timesteps

    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        embeds: torch.Tensor,
        mask: torch.Tensor | None,
        guidance: Guidance,
    ) -> torch.Tensor:
        """The (guided) model prediction at one step.

        ``embeds``/``mask`` are stacked ``[uncond; cond]`` whenever :meth:`runs_cfg`; the batch is doubled
        only at steps inside the guidance interval, and elsewhere the conditional half runs alone.
        """
        in_interval = guidance.guides_at(t, self.scheduler.config.num_train_timesteps)
        guided = in_interval and self.runs_cfg(guidance.scale)
        if self.runs_cfg(guidance.scale) and not guided:
            embeds, mask = embeds[len(latents) :], None if mask is None else mask[len(latents) :]
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = self.scheduler.scale_model_input(model_input, t)
        extra = {}
        if self.guidance_conditioned:
            dim = self.unet.config.time_cond_proj_dim
            scale = guidance.scale if in_interval else 1.0
            extra["timestep_cond"] = guidance_embedding(scale, dim, len(latents)).to(latents)
        out = self.unet(model_input, t, encoder_hidden_states=embeds, encoder_attention_mask=mask, **extra).sample
        return split_guided(out, guidance.scale, guidance.rescale) if guided else out

    @property
    def guidance_conditioned(self) -> bool:
        """Whether the UNet reads the guidance scale itself (a guidance-conditioned CFG-distilled student)."""
        return getattr(self.unet.config, "time_cond_proj_dim", None) is not None

    def runs_cfg(self, guidance_scale: float) -> bool:
        """Whether sampling at ``guidance_scale`` runs the unconditional branch too (2 UNet calls per step)."""
        return uses_guidance(guidance_scale) and not self.guidance_conditioned

    def denoise(
        self,
        latents: torch.Tensor,
        embeds: torch.Tensor,
        mask: torch.Tensor | None,
        guidance: Guidance,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> torch.Tensor:
        """Run the sampler from noise ``latents`` to the final latents."""
        timesteps = self.prepare_timesteps(num_inference_steps)
        extra = {"generator": generator} if "generator" in _step_params(self.scheduler) else {}
        names = self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                noise = self.predict_noise(latents, t, embeds, mask, guidance)
                latents = self.scheduler.step(noise, t, latents, **extra).prev_sample
                if callback_on_step_end is not None:
                    available = {"latents": latents, "prompt_embeds": embeds}
                    result = callback_on_step_end(self, i, t, {name: available[name] for name in names})
                    latents = result.pop("latents", latents)
                bar.update()
        return latents


def _step_params(scheduler: Any) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)
