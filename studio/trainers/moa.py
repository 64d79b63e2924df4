"""Mixture-of-attention training: the personalised branches, routers and subject MLP of :mod:`studio.attention.moa`.

Two modes share one loss:

- ``encoder`` (the paper's): many subjects of :mod:`studio.worlds.concept`'s family, each introduced by its
  reference image through the image encoder; afterwards a new subject needs one reference image and no training.
- ``subject``: one subject's few images (``data.dir``, masks under ``data.dir/masks/``), like the DreamBooth
  recipe; the subject's embedding is a learnt vector. ``init`` can start it from an encoder run.

The loss on a batch of subject rows and no-subject rows (world images with their own captions, mask 0)::

    L = L_diff + λ_router · mean((1 − M) ⊙ (1 − R̄_prior))² + λ_loc · L_loc

``L_diff`` is the v/ε regression, averaged over the subject's mask instead of the image with probability
``mask_probability`` (FastComposer's masked loss); ``R̄_prior`` is the prior branch's router weight averaged over
layers (each map resized to the mask); ``L_loc`` is FastComposer's balanced localisation loss on the personalised
cross-attention of the lowest-resolution layers: the subject token's mean attention outside the mask minus inside.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from studio.attention.moa import IDENTIFIER, MoA, MoASettings, overlay, split_prompt, subject_token_index
from studio.guidance import DEFAULT_GUIDANCE
from studio.io import atomic_write_text, read_image
from studio.models.text import encode_text
from studio.models.zoo import world_of
from studio.trainers.base import Trainer
from studio.trainers.config import TrainerConfig, sample_generator
from studio.trainers.finetune import ConceptData, read_concept_files
from studio.worlds import get_world
from studio.worlds.base import to_tensor

logger = logging.getLogger(__name__)

MASKS = "masks"
#: Held-out subjects drawn in the training grids (and the first ones the study scores).
GRID_SUBJECTS = 4
GRID_PROMPTS = ("a sks shape on a navy background in the top left", "a sks shape on a white background on the right")


@dataclass(kw_only=True)
class MoAConfig(TrainerConfig):
    """Training a mixture-of-attention model.

    Attributes:
        base: the base model (an embedded name or a pipeline folder); it stays frozen.
        world: the world of the no-subject rows and the judges (default: ``base``'s).
        mode: ``encoder`` (many subjects, one reference image each) or ``subject`` (one subject, ``data``).
        data: subject mode: the subject's images (masks in ``data.dir/masks/`` under the same names) and the
            prompt naming it (``instance_prompt``, with the identifier before the class word).
        init: a MoA run (folder or ``moa.safetensors``) to start from instead of copies of the base.
        image_dim, router_hidden, mlp_hidden: :class:`studio.attention.moa.MoASettings` widths.
        router_weight: ``λ_router`` of the router loss.
        localisation_weight: ``λ_loc`` of the cross-attention localisation loss (0: off).
        mask_probability: chance that a subject row's diffusion loss is averaged over its mask only.
        no_subject_fraction: share of each batch drawn from the world with no subject (mask 0 everywhere), so
            prompts without the identifier keep the base model's images.
    """

    base: str = "shapes"
    world: str | None = None
    mode: str = "encoder"
    data: ConceptData = field(default_factory=ConceptData)
    init: Path | None = None
    image_dim: int = 256
    router_hidden: int = 32
    mlp_hidden: int = 384
    router_weight: float = 1.0
    localisation_weight: float = 0.01
    mask_probability: float = 0.5
    no_subject_fraction: float = 0.25
    export: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.world = world_of(self.base, self.world)
        MoASettings(
            mode=self.mode, image_dim=self.image_dim, router_hidden=self.router_hidden, mlp_hidden=self.mlp_hidden
        )  # fmt: skip  (raises naming the bad field)
        for name in ("router_weight", "localisation_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("mask_probability", "no_subject_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mode == "subject" and split_prompt(self.data.instance_prompt).start is None:
            raise ValueError(
                f"data.instance_prompt {self.data.instance_prompt!r} must name the subject with "
                f"{IDENTIFIER!r} before its class word, e.g. 'a {IDENTIFIER} shape'"
            )


def read_subject_folder(folder: Path | None, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A subject's images and masks: ``folder/*.png`` and ``folder/masks/<same name>`` (gray, white = subject).

    Raises:
        ValueError: for a missing folder or mask, or a mask of another size.
    """
    images = read_concept_files(folder, "image", size)
    names = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    masks = []
    for name in names:
        path = Path(folder) / MASKS / (name.stem + ".png")
        if not path.is_file():
            raise ValueError(
                f"{str(name)!r} has no mask {str(path)!r}; MoA needs each subject image's mask (white = subject), "
                "as `mixstudio world shapes --subject NAME` writes them"
            )
        masks.append(read_image(path, size).astype(np.float32).mean(-1) / 255.0)
    return images, masks


class MoATrainer(Trainer):
    """Trains :class:`studio.attention.moa.MoA` on a frozen base (:class:`MoAConfig`)."""

    config: MoAConfig

    def build(self) -> None:
        from studio.pipelines import load_pipeline
        from studio.worlds.concept import all_subjects

        cfg = self.config
        self.world = get_world(cfg.world)
        if self.world.modality != "image":
            raise ValueError(f"MoA personalises image models; {cfg.base!r} is a {self.world.modality} model")
        self.pipe = load_pipeline(cfg.base, "image")
        self.pipe.unet.requires_grad_(False)
        self.size = self.pipe.default_size
        settings = MoASettings(mode=cfg.mode, image_dim=cfg.image_dim, router_hidden=cfg.router_hidden,
                               mlp_hidden=cfg.mlp_hidden, base=cfg.base)  # fmt: skip
        self.subjects = all_subjects("train")
        self.images = self.masks = None
        if cfg.mode == "subject":
            images, masks = read_subject_folder(cfg.data.dir, self.size)
            self.images, self.masks = np.stack(images), np.stack(masks)
        self.moa = self.initial_moa(settings)
        self.moa.install(self.pipe.unet, cfg.attention)
        self.cross_names = [self.moa.settings.layers[i] for i in self.moa.cross_layers]
        self.model = _MoADenoiser(self.pipe.unet, self.moa)
        params = [p for p in self.moa.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = self.pipe.scheduler.config
        self.noise_scheduler = DDPMScheduler.from_config(schedule)
        self.prediction_type = schedule.get("prediction_type", "epsilon")
        self.localise: list[str] | None = None  # the lowest-resolution cross-attention layers, found at step 1
        logger.info("moa (%s): %d trainable parameters", cfg.mode, sum(p.numel() for p in params))

    def initial_moa(self, settings: MoASettings) -> MoA:
        """Copies of the base's attention (or ``init``'s weights); in subject mode, the code starts at the mean
        image embedding of the subject's images and the image encoder is frozen."""
        cfg = self.config
        unet = self.pipe.unet
        new_code = cfg.init is None  # a subject run from another subject run keeps its learnt code
        if cfg.init is None:
            moa = MoA.create(unet, settings)
        else:
            moa = MoA.load(cfg.init, unet)
            if moa.settings.mode != cfg.mode:
                if cfg.mode != "subject":
                    raise ValueError(
                        f"init {str(cfg.init)!r} is a subject-mode MoA; an encoder run cannot start from it"
                    )
                moa, new_code = _to_subject_mode(moa), True
        if cfg.mode == "subject":
            moa.encoder.requires_grad_(False)
        if cfg.mode == "subject" and new_code:
            with torch.no_grad():
                refs = torch.stack([to_tensor(a) for a in self.images])
                moa.subject_code.copy_(moa.encoder(refs).mean(0))
        return moa

    # ---- data --------------------------------------------------------------------------------------------------
    def load_batch(self, step: int, indices: list[int]) -> dict[str, Any]:
        """Images, masks, captions (class word offsets) and reference images of one step (model-free)."""
        from studio.worlds.concept import reference_image, subject_sample

        cfg = self.config
        images, masks, texts, starts, refs = [], [], [], [], []
        for i in indices:
            rng = np.random.default_rng([cfg.seed, step, i])
            if rng.random() < cfg.no_subject_fraction:
                sample = self.world.sample(int(rng.integers(2**31)))
                images.append(sample.data)
                masks.append(np.zeros(sample.data.shape[:2], np.float32))
                texts.append(sample.caption)
                starts.append(None)
                refs.append(np.zeros_like(sample.data))
            elif cfg.mode == "subject":
                k = i % len(self.images)
                prompt = split_prompt(cfg.data.instance_prompt)
                images.append(self.images[k])
                masks.append(self.masks[k])
                texts.append(prompt.text)
                starts.append(prompt.start)
                refs.append(self.images[k])
            else:
                subject = self.subjects[int(rng.integers(len(self.subjects)))]
                sample = subject_sample(subject, rng)
                images.append(sample.image)
                masks.append(sample.mask)
                texts.append(sample.text)
                starts.append(sample.start)
                refs.append(reference_image(subject))
        return {"images": np.stack(images), "masks": np.stack(masks), "texts": texts, "starts": starts,
                "references": np.stack(refs), "indices": indices}  # fmt: skip

    # ---- training ----------------------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from studio.attention.moa import SubjectPrompt

        cfg = self.config
        device = self.accelerator.device
        indices = batch["indices"]
        gens = [sample_generator(cfg.seed, self.step, i) for i in indices]
        x0 = self.pipe.encode(torch.stack([to_tensor(a) for a in batch["images"]]).to(device))
        masks = torch.from_numpy(batch["masks"]).to(device)
        if masks.shape[-2:] != x0.shape[-2:]:  # a latent model: the mask at the latents' size
            masks = F.adaptive_avg_pool2d(masks[:, None], x0.shape[-2:])[:, 0]
        prompts = [SubjectPrompt(t, s) for t, s in zip(batch["texts"], batch["starts"], strict=True)]
        token_index = subject_token_index(self.pipe.tokenizer, prompts)
        embeds, text_mask = encode_text(self.pipe.text_encoder, self.pipe.tokenizer, batch["texts"], device)
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(device)
        t = torch.stack([torch.randint(0, len(self.noise_scheduler.alphas_cumprod), (), generator=g) for g in gens])
        t = t.to(device)
        masked = torch.tensor([torch.rand((), generator=g).item() < cfg.mask_probability for g in gens], device=device)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        target = noise if self.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(x0, noise, t)
        references = torch.stack([to_tensor(a) for a in batch["references"]]).to(device)
        record = self.cross_names if cfg.localisation_weight > 0 else []
        pred, state = self.model(noisy, t, embeds, text_mask, token_index, references, record)

        has_subject = torch.tensor([i >= 0 for i in token_index], device=device)
        error = (pred.float() - target.float()).pow(2).mean(1)  # (B, h, w)
        diffusion = masked_diffusion_loss(error, masks, masked & has_subject)
        prior = self.moa.prior_weight(tuple(masks.shape[-2:]))
        router = router_loss(prior, masks)
        loss = diffusion + cfg.router_weight * router
        metrics = {"diffusion": diffusion.item(), "router": router.item()}
        with torch.no_grad():
            pers, fg = 1 - prior, (masks > 0.5).float()
            metrics["pers_inside"] = _masked_mean(pers, fg * has_subject.view(-1, 1, 1)).item()
            metrics["pers_outside"] = _masked_mean(pers, 1 - fg).item()
        if record:
            if self.localise is None:  # the lowest-resolution cross-attention layers (FastComposer's middle layers)
                smallest = min(v.shape[1] for v in state.token_attention.values())
                self.localise = [n for n, v in state.token_attention.items() if v.shape[1] == smallest]
            per_layer = [localisation_loss(state.token_attention[n][has_subject], masks[has_subject])
                         for n in self.localise]  # fmt: skip
            localisation = torch.stack(per_layer).mean()
            loss = loss + cfg.localisation_weight * localisation
            metrics["localisation"] = localisation.item()
        return loss, metrics

    # ---- checkpoints hold the MoA alone ------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.moa.state_dict().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.moa.load_state_dict(state)

    # ---- sampling and export -----------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """A grid under ``samples/``: per held-out subject (or the trained one), the reference, the MoA sample, its
        router map and the base model's sample of the same prompt and seed."""
        from studio.io import write_png

        refs, names = self.grid_references()
        prompts = list(GRID_PROMPTS)
        with torch.no_grad():
            grid = subject_grid(self.pipe, self.moa, prompts, refs, num_inference_steps=self.config.grid_steps,
                                guidance_scale=DEFAULT_GUIDANCE)  # fmt: skip
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        write_png(self.out / "samples" / f"step-{self.step:08d}.png", grid)
        logger.info("moa grid: subjects %s", ", ".join(names))
        return {}

    def grid_references(self) -> tuple[list[np.ndarray], list[str]]:
        from studio.worlds.concept import all_subjects, reference_image

        if self.config.mode == "subject":
            return [self.images[0]], [str(self.config.data.dir)]
        subjects = all_subjects("held_out")[:: len(all_subjects("held_out")) // GRID_SUBJECTS][:GRID_SUBJECTS]
        return [reference_image(s) for s in subjects], [s.name for s in subjects]

    def export(self, metrics: dict[str, float]) -> Path | None:
        """Write ``out/moa.safetensors`` (and ``export``) and ``out/moa.json``, the card."""
        cfg = self.config
        targets = [self.out / "moa.safetensors"] + ([Path(cfg.export)] if cfg.export else [])
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.moa.save(path)
        card = {
            "mode": cfg.mode,
            "base": cfg.base,
            "identifier": IDENTIFIER,
            "trainable_parameters": self.moa.trainable_parameters(),
            "settings": asdict(self.moa.settings) | {"layers": len(self.moa.settings.layers)},
            "metrics": metrics,
            "command": self.command,
        }
        atomic_write_text(self.out / "moa.json", json.dumps(card, indent=2, default=str) + "\n")
        return targets[-1]


def subject_grid(pipe: Any, moa: MoA, prompts: list[str], references: list[np.ndarray], **sampling: Any) -> np.ndarray:
    """One row per reference: the reference, then per prompt the MoA sample, its router map over it and the base
    model's sample of the same prompt and seed (strength 0)."""
    from studio.generation import generate
    from studio.plots import image_grid

    cells = []
    for k, reference in enumerate(references):
        subject = reference if moa.settings.mode == "encoder" else None
        seeds = [1000 * k + j for j in range(len(prompts))]
        mixed = generate(pipe, prompts, seeds=seeds, moa=moa, subject=subject, **sampling)
        base = generate(pipe, prompts, seeds=seeds, moa=moa, subject=subject, moa_strength=0.0, **sampling)
        cells.append(reference)
        for image, router, plain in zip(mixed.data, mixed.router_maps, base.data, strict=True):
            cells += [image, overlay(image, router), plain]
    return image_grid(cells, cols=1 + 3 * len(prompts), scale=3)


def masked_diffusion_loss(error: torch.Tensor, masks: torch.Tensor, use_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of per-pixel ``error (B, h, w)``: averaged over the mask where ``use_mask`` (and the mask
    is not empty), over the whole image elsewhere."""
    area = masks.flatten(1).sum(1)
    inside = (error * masks).flatten(1).sum(1) / area.clamp(min=1e-6)
    return torch.where(use_mask & (area > 0), inside, error.flatten(1).mean(1)).mean()


def router_loss(prior: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``mean((1 − M) ⊙ (1 − R̄_prior))²`` over pixels and batch: background pixels not sent to the prior branch."""
    return ((1 - masks) * (1 - prior)).pow(2).flatten(1).mean(1).mean()


def localisation_loss(attention: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """FastComposer's balanced localisation loss: the subject token's mean attention outside the mask minus its mean
    attention inside, averaged over rows. ``attention (B, L)`` of a square layer; ``masks (B, H, W)`` resized to it."""
    if len(attention) == 0:
        return attention.new_zeros(())
    side = math.isqrt(attention.shape[1])
    m = F.adaptive_avg_pool2d(masks[:, None], (side, side)).flatten(1)
    outside = (attention * (1 - m)).sum(1) / (1 - m).sum(1).clamp(min=1e-6)
    inside = (attention * m).sum(1) / m.sum(1).clamp(min=1e-6)
    return (outside - inside).mean()


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp(min=1e-6)


def _to_subject_mode(moa: MoA) -> MoA:
    """An encoder-mode MoA as a subject-mode one (same weights, plus a subject code to learn)."""
    settings = MoASettings(**(asdict(moa.settings) | {"mode": "subject"}))
    out = MoA(settings, moa.text_dim)
    out.branches = moa.branches
    out.load_state_dict(moa.state_dict(), strict=False)
    return out


class _MoADenoiser(nn.Module):
    """The frozen UNet with the MoA processors, as one module (what accelerate wraps)."""

    def __init__(self, unet: nn.Module, moa: MoA):
        super().__init__()
        self.unet = unet
        self.moa = moa

    def forward(self, noisy, t, embeds, mask, token_index, references, record):
        subject = self.moa.encode_subject(references)
        with self.moa.conditioned(token_index, subject, record_attention=record) as state:
            pred = self.unet(noisy, t, encoder_hidden_states=embeds, encoder_attention_mask=mask).sample
        return pred, state
