"""Text-to-music diffusion over log-mel spectrograms, with a vocoder back to waveforms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from diffusers.utils import replace_example_docstring

from studio.guidance import DEFAULT_MUSIC_GUIDANCE, Guidance
from studio.models.audio import MelCodec
from studio.pipelines.base import StepCallback, StudioDiffusionPipeline

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from studio.pipelines import load_pipeline

        >>> pipe = load_pipeline("synth", "audio")  # or StudioMusicPipeline.from_pretrained(folder)
        >>> out = pipe("a fast minor tune with drums", guidance_scale=4.0, generator=torch.manual_seed(0))
        >>> out.audios.shape, out.sample_rate  # (1, 32768) float32 at 16 kHz
        ```
"""


@dataclass
class MusicPipelineOutput(AudioPipelineOutput):
    """diffusers' audio output, ``audios`` ``(B, T)`` (numpy or torch), plus their ``sample_rate`` and the generated
    mels ``(B, 1, M, F)``. With ``return_dict=False`` the pipeline returns ``(audios,)``, as diffusers' do."""

    sample_rate: int | None = None
    mels: Any = None


class StudioMusicPipeline(StudioDiffusionPipeline):
    """Text-to-music: a UNet denoises a one-channel log-mel image; the codec's vocoder renders audio.

    Args:
        unet: a ``UNet2DConditionModel`` with one input channel (mel bins × frames).
        scheduler: any diffusers scheduler.
        codec: the :class:`~studio.models.audio.MelCodec` that defines the mel space and inverts it.
        text_encoder, tokenizer, text_encoder_package: as in :class:`~studio.pipelines.image.StudioImagePipeline`.
    """

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: Any,
        codec: MelCodec,
        text_encoder: Any = None,
        tokenizer: Any = None,
        text_encoder_package: str | None = None,
    ):
        super().__init__()
        self.register_modules(
            unet=unet, scheduler=scheduler, codec=codec, text_encoder=text_encoder, tokenizer=tokenizer
        )
        self._attach_packaged_text_encoder(text_encoder, text_encoder_package)

    @property
    def sample_rate(self) -> int:
        return self.codec.config.sample_rate

    @property
    def default_length_s(self) -> float:
        frames = self.unet.config.sample_size[1] if isinstance(self.unet.config.sample_size, (list, tuple)) else None
        frames = frames or self.unet.config.sample_size
        return frames * self.codec.config.hop_length / self.sample_rate

    @property
    def length_step_s(self) -> float:
        """Clip lengths are whole multiples of this many seconds (the UNet's frame granularity)."""
        multiple = 2 ** (len(self.unet.config.block_out_channels) - 1)
        return multiple * self.codec.config.hop_length / self.sample_rate

    @property
    def max_length_s(self) -> float:
        """The longest clip this pipeline makes: 16 times its training length."""
        return 16 * self.default_length_s

    def length_error(self, audio_length_in_s: float) -> str | None:
        """Why the pipeline cannot make a clip of this length (None: it can), with the nearest length it can."""
        step = self.length_step_s
        if audio_length_in_s > self.max_length_s + 1e-3:
            return f"{audio_length_in_s} is too long; at most {self.max_length_s:g} s"
        count = round(audio_length_in_s / step)
        if audio_length_in_s <= 0 or count < 1 or abs(count * step - audio_length_in_s) > 1e-3:
            nearest = max(1, count) * step
            got = f"got {audio_length_in_s!r}; try {nearest:.3f}"
            return f"must be a positive multiple of {step:.3f} s for this model, {got}"
        return None

    def frames_for(self, audio_length_in_s: float) -> int:
        """Mel frames for a clip length.

        Raises:
            ValueError: for lengths that are not a positive multiple of the UNet's frame granularity.
        """
        error = self.length_error(audio_length_in_s)
        if error is not None:
            raise ValueError(f"audio_length_in_s {error}")
        return round(audio_length_in_s * self.sample_rate / self.codec.config.hop_length)

    def prepare_latents(
        self,
        batch: int,
        frames: int,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """Initial noise ``(B, 1, n_mels, frames)`` scaled by the scheduler's ``init_noise_sigma``."""
        shape = (batch, self.unet.config.in_channels, self.codec.config.n_mels, frames)
        return self.initial_noise(shape, generator, latents)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Waveforms ``(B, T)`` → mels ``(B, 1, M, F)`` in [-1, 1] (the inverse of :meth:`decode`)."""
        return self.codec.encode(audio)

    def decode(self, mels: torch.Tensor) -> torch.Tensor:
        """Mels ``(B, 1, M, F)`` in [-1, 1] → waveforms ``(B, F · hop)``."""
        return self.codec.decode(mels.float().clamp(-1, 1))

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        audio_length_in_s: float | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = DEFAULT_MUSIC_GUIDANCE,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        num_waveforms_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: Literal["np", "pt", "latent"] = "np",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> MusicPipelineOutput | tuple:
        """Generate music clips for ``prompt``.

        Args:
            prompt, negative_prompt, num_inference_steps, guidance_scale, guidance_rescale,
            guidance_interval, generator, latents, callback_on_step_end: as in
                :class:`~studio.pipelines.image.StudioImagePipeline`.
            audio_length_in_s: clip length (default: the training length).
            num_waveforms_per_prompt: clips per prompt.
            output_type: ``np`` (float32 ``(B, T)``), ``pt``, or ``latent`` (the mels, no vocoder).
            return_dict: return a :class:`MusicPipelineOutput` instead of a tuple.

        Examples:

        Returns:
            ``MusicPipelineOutput(audios, sample_rate, mels)`` or ``(audios,)``.
        """
        # 1. Check inputs
        guidance = Guidance(guidance_scale, guidance_rescale, guidance_interval)
        prompts = self.check_common_inputs(
            prompt, negative_prompt, num_inference_steps, guidance, num_waveforms_per_prompt
        )
        frames = self.frames_for(audio_length_in_s or self.default_length_s)
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        # 2. Encode the prompt (stacked with the negative prompt when guiding)
        embeds, mask = self.encode_prompt(prompts, num_waveforms_per_prompt, guidance_scale, negative_prompt)
        # 3. Prepare the initial noise
        batch = len(prompts) * num_waveforms_per_prompt
        latents = self.prepare_latents(batch, frames, generator, latents)
        # 4. Denoise
        mels = self.denoise(
            latents,
            embeds,
            mask,
            guidance,
            num_inference_steps,
            generator,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        # 5. Vocode and postprocess
        audios: Any = mels if output_type == "latent" else self.decode(mels)
        if output_type == "np":
            audios = audios.cpu().numpy().astype(np.float32)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (audios,)
        return MusicPipelineOutput(audios=audios, sample_rate=self.sample_rate, mels=mels)
