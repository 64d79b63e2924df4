"""Text-to-image diffusion pipeline: pixel space (embedded ``shapes``) or latent space (Stable Diffusion)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import replace_example_docstring

from studio.guidance import DEFAULT_GUIDANCE, Guidance
from studio.pipelines.base import StepCallback, StudioDiffusionPipeline

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from studio.pipelines import load_pipeline

        >>> pipe = load_pipeline("shapes", "image")  # or a Stable Diffusion folder: load_pipeline("path/to/sd")
        >>> image = pipe("a red circle in the centre", guidance_scale=2.0, generator=torch.manual_seed(0)).images[0]
        >>> image.save("red.png")
        ```
"""


class StudioImagePipeline(StudioDiffusionPipeline):
    """Text-to-image with classifier-free guidance; drop-in for a diffusers ``DiffusionPipeline``.

    Loads the embedded model (a pixel-space UNet conditioned on the packaged MiniLM) and
    standard Stable Diffusion folders (UNet + ``AutoencoderKL`` + CLIP) through the same code:
    with a ``vae`` the UNet runs on latents, without one on pixels.

    Args:
        unet: a ``UNet2DConditionModel`` predicting noise.
        scheduler: any diffusers scheduler (see :data:`studio.pipelines.base.SCHEDULERS`).
        vae: an ``AutoencoderKL`` for latent models, or None for pixel space.
        text_encoder, tokenizer: a transformers text encoder and its tokenizer (None with a packaged encoder).
        text_encoder_package: name of a packaged text encoder used when ``text_encoder`` is None.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: Any,
        vae: AutoencoderKL | None = None,
        text_encoder: Any = None,
        tokenizer: Any = None,
        text_encoder_package: str | None = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
        self._attach_packaged_text_encoder(text_encoder, text_encoder_package)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @property
    def default_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    def check_inputs(self, height: int, width: int, output_type: str) -> None:
        """Validate image-specific arguments.

        Raises:
            ValueError: for a size the UNet cannot take or an unknown output type.
        """
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(f"{name} must be a positive multiple of {multiple} for this model, got {value!r}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")

    def prepare_latents(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """Initial noise ``(B, C, h, w)`` scaled by the scheduler's ``init_noise_sigma``."""
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        return self.initial_noise(shape, generator, latents)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [-1, 1] → the UNet's space (the inverse of :meth:`decode`; VAE mean latents)."""
        if self.vae is None:
            return images
        return self.vae.encode(images.to(self.vae.dtype)).latent_dist.mean * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images ``(B, 3, H, W)`` in [-1, 1]."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return images.clamp(-1, 1)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = DEFAULT_GUIDANCE,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: Literal["pil", "np", "pt", "latent"] = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate images for ``prompt``.

        Args:
            prompt: one prompt or a list.
            negative_prompt: what the unconditional branch is conditioned on (default: the empty prompt).
            height, width: image size in pixels (default: the model's training size).
            num_inference_steps: sampler steps.
            guidance_scale: CFG scale ``w``; 1 disables guidance (and halves the cost).
            guidance_rescale: ``φ`` in [0, 1] of guidance rescale (Lin et al. 2024 §3.4); tames large ``w``.
            guidance_interval: noise levels ``(low, high)`` of ``t / T`` where guidance applies; the
                conditional model alone runs elsewhere, at half the cost (Kynkäänniemi et al. 2024).
            num_images_per_prompt: images per prompt.
            generator: torch generator(s) for reproducible noise.
            latents: initial noise ``(B, C, h, w)`` instead of sampling it.
            output_type: ``pil`` (PIL images), ``np`` (``(B, H, W, 3)`` float in [0, 1]), ``pt`` or ``latent``.
            return_dict: return an ``ImagePipelineOutput`` instead of a tuple.
            callback_on_step_end: called as ``fn(pipe, step, timestep, {"latents": ...})`` after each step;
                may return replacement tensors.
            callback_on_step_end_tensor_inputs: which of ``_callback_tensor_inputs`` the callback receives.

        Examples:

        Returns:
            ``ImagePipelineOutput(images=...)`` or ``(images,)``.
        """
        # 1. Check inputs
        height, width = height or self.default_size, width or self.default_size
        guidance = Guidance(guidance_scale, guidance_rescale, guidance_interval)
        prompts = self.check_common_inputs(
            prompt, negative_prompt, num_inference_steps, guidance, num_images_per_prompt
        )
        self.check_inputs(height, width, output_type)
        # 2. Encode the prompt (stacked with the negative prompt when guiding)
        embeds, mask = self.encode_prompt(prompts, num_images_per_prompt, guidance_scale, negative_prompt)
        # 3. Prepare the initial noise
        batch = len(prompts) * num_images_per_prompt
        latents = self.prepare_latents(batch, height, width, generator, latents)
        # 4. Denoise
        latents = self.denoise(
            latents,
            embeds,
            mask,
            guidance,
            num_inference_steps,
            generator,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        # 5. Decode and postprocess
        if output_type == "latent":
            images: Any = latents
        else:
            pixels = (self.decode(latents) + 1) / 2
            if output_type == "pt":
                images = pixels
            else:
                images = pixels.permute(0, 2, 3, 1).float().cpu().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """``(B, H, W, 3)`` float in [0, 1] → uint8."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
