"""The shared half of trainers that finetune a copy of a pipeline's UNet: the *student* of a frozen base.

CFG distillation and reward finetuning both load a base pipeline, freeze its UNet, train a copy, sample
with that copy in the base's pipeline, and export the pipeline with the copy swapped in. They differ in
their losses, which is all their subclasses of :class:`StudentTrainer` hold.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from studio.guidance import Guidance, guidance_embedding, split_guided
from studio.models.text import encode_text
from studio.trainers.base import Trainer
from studio.worlds import get_world
from studio.worlds.base import to_tensor

logger = logging.getLogger(__name__)


class StudentTrainer(Trainer):
    """Finetunes ``self.model``, a copy of ``base``'s UNet; ``self.teacher`` is the frozen original.

    Trainers that sample their own guided rollouts set ``self.guidance`` in ``build`` (see :meth:`guided_predictor`).
    """

    guidance: Guidance

    def load_base(
        self, base: str, world: str, make_student: Callable[[torch.nn.Module], torch.nn.Module] = copy.deepcopy
    ) -> None:
        """Load the base pipeline and set the world, the frozen teacher, the student and the DDPM schedule.

        Args:
            base: an embedded name or a pipeline folder.
            world: the world whose captions and judges the run uses.
            make_student: the trainable model made from the teacher (default: a copy of it).
        """
        from studio.pipelines import load_pipeline

        self.world = get_world(world)
        self.pipe = load_pipeline(base, self.world.modality)
        self.teacher = self.pipe.unet.eval().requires_grad_(False)
        self.model = make_student(self.teacher).train().requires_grad_(True)
        schedule = self.pipe.scheduler.config
        self.prediction_type = schedule.get("prediction_type", "epsilon")
        self.noise_scheduler = DDPMScheduler.from_config(schedule)
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod
        self.clip_x0 = schedule.get("clip_sample_range", 1.0) if schedule.get("clip_sample") else None
        self.null_embeds, self.null_mask = self.encode([""])

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return encode_text(self.pipe.text_encoder, self.pipe.tokenizer, texts, self.accelerator.device)

    def with_unconditional(
        self, embeds: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The doubled ``[∅; c]`` prompt batch ``(2B, L, D)`` (and mask) of one guided UNet call."""
        n = len(embeds)
        both = torch.cat([self.null_embeds.expand(n, -1, -1), embeds])
        return both, None if mask is None else torch.cat([self.null_mask.expand(n, -1), mask])

    def sample_shape(self) -> tuple[int, ...]:
        size = self.teacher.config.sample_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        return (self.teacher.config.in_channels, *size)

    def encode_data(self, samples: list) -> torch.Tensor:
        """World samples in the model's space (pixels, VAE latents or mels)."""
        return self.pipe.encode(torch.stack([to_tensor(s.data) for s in samples]).to(self.accelerator.device))

    def predictor(self, unet, embeds: torch.Tensor, mask: torch.Tensor | None, scales: torch.Tensor | None = None):
        """``(x, t) -> output`` of ``unet`` for these prompts (and, for a guidance-conditioned student, scales)."""
        extra = {}
        if scales is not None:
            extra["timestep_cond"] = guidance_embedding(scales, unet.config.time_cond_proj_dim).to(embeds)

        def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return unet(x, t, encoder_hidden_states=embeds, encoder_attention_mask=mask, **extra).sample

        return predict

    def guided_predictor(self, embeds: torch.Tensor, mask: torch.Tensor | None):
        """``(x, t) -> output`` of the trained model with ``self.guidance`` (one doubled batch where it guides).

        A sampler step has one timestep for the whole batch, so whether it guides is decided per call.
        """
        guidance = self.guidance
        cond = self.predictor(self.model, embeds, mask)
        both = self.predictor(self.model, *self.with_unconditional(embeds, mask))

        def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if not guidance.guides_at(t[0], len(self.alphas_cumprod)):
                return cond(x, t)
            return split_guided(both(torch.cat([x, x]), t.repeat(2)), guidance.scale, guidance.rescale)

        return guided

    @contextlib.contextmanager
    def student_pipeline(self) -> Iterator:
        """The base pipeline with the student's UNet swapped in (restored on exit)."""
        student = self.accelerator.unwrap_model(self.model).eval()
        self.pipe.unet = student
        try:
            yield self.pipe
        finally:
            self.pipe.unet = self.teacher
            student.train()

    def student_grid(self, prompts: int, guidance_scale: float, **guidance) -> dict[str, float]:
        """Sample ``prompts`` held-out prompts × 2 with the student; grid under ``samples/``; eval-judge scores.

        Args:
            prompts: how many of the world's held-out prompts.
            guidance_scale, **guidance: the pipeline's guidance arguments (``guidance_rescale``, ...).
        """
        texts = [p.text for p in self.world.eval_prompts()[:prompts]]
        with self.student_pipeline() as pipe:
            report = self.sample_grid(pipe, texts, guidance_scale=guidance_scale, **guidance)
        logger.info("step %d: student eval-judge adherence %.3f at w=%g", self.step, report.adherence, guidance_scale)
        return {"sample_adherence": report.adherence, "sample_diversity": report.diversity or 0.0}

    def export(self, metrics: dict[str, float]) -> Path | None:
        """Write the student pipeline to ``out/model`` (and ``config.export``) with its model card."""
        with self.student_pipeline() as pipe:
            return self.write_model(pipe.save_pretrained, metrics, self.model_card(metrics))

    def model_card(self, metrics: dict[str, float]) -> str:
        """The exported pipeline's README (command, steps, wall time, metrics)."""
        raise NotImplementedError
