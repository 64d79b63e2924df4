"""Recipes: named functions that return a training config (``mixstudio train NAME --set key=value``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from studio.judges.train import JudgeTrainConfig
from studio.trainers.autoencoder import AutoencoderConfig, AutoencoderTrainer
from studio.trainers.base import Trainer
from studio.trainers.cfg_distill import CFGDistillConfig, CFGDistillTrainer
from studio.trainers.ddpo import DDPOConfig, DDPOTrainer
from studio.trainers.finetune import FinetuneConfig, FinetuneTrainer
from studio.trainers.moa import MoAConfig, MoATrainer
from studio.trainers.msdm import MSDMConfig, MSDMTrainer
from studio.trainers.musicgen_distill import MusicgenDistillConfig, MusicgenDistillTrainer
from studio.trainers.pretrain import PretrainConfig, PretrainTrainer
from studio.trainers.reward_finetune import RewardFinetuneConfig, RewardFinetuneTrainer
from studio.trainers.separate import SeparateConfig, SeparateTrainer

#: The one place a config type maps to the trainer that runs it (judges train by :func:`train_judge`).
TRAINERS: dict[type, type[Trainer]] = {
    AutoencoderConfig: AutoencoderTrainer,
    PretrainConfig: PretrainTrainer,
    CFGDistillConfig: CFGDistillTrainer,
    FinetuneConfig: FinetuneTrainer,
    MusicgenDistillConfig: MusicgenDistillTrainer,
    RewardFinetuneConfig: RewardFinetuneTrainer,
    SeparateConfig: SeparateTrainer,
    DDPOConfig: DDPOTrainer,
    MSDMConfig: MSDMTrainer,
    MoAConfig: MoATrainer,
}


def _judge(world: str, role: str) -> Callable[[], JudgeTrainConfig]:
    # reward and eval judges differ in init seed, data stream and width, so they fail differently
    seed, data_seed = (1, 101) if role == "reward" else (2, 202)
    per_world = {
        "shapes": {"train_samples": 24_000, "epochs": 6, "width": 24 if role == "reward" else 32},
        # audio convs cost ~10x more per sample on this CPU: fewer samples, narrower, 32 ms frames
        "synth": {
            "train_samples": 8_000,
            "epochs": 6,
            "width": 16 if role == "reward" else 20,
            "time_pool": 2,
            "batch_size": 64,
        },
    }

    def recipe() -> JudgeTrainConfig:
        out = Path(f"runs/judge-{world}-{role}")
        return JudgeTrainConfig(world=world, role=role, seed=seed, data_seed=data_seed, out=out, **per_world[world])

    recipe.__doc__ = f"The {role} judge of the {world} world (ships in assets/judges/{world}-{role})."
    return recipe


def vae_shapes() -> AutoencoderConfig:
    """The latent space of the embedded image model: 32x32 RGB shapes <-> 8x8x4 latents."""
    return AutoencoderConfig(
        world="shapes",
        out=Path("runs/vae-shapes"),
        channels=(16, 32, 64),  # 0.8 s per batch-32 step on one thread; (32, 64, 128) costs 2.6 s
        latent_channels=4,
        max_steps=1000,
        batch_size=32,
        lr=1e-3,
        lr_warmup_steps=50,
        checkpoint_every=250,
        sample_every=250,
    )


def pretrain_shapes() -> PretrainConfig:
    """The one-hour CPU recipe of the ``shapes`` base: a pixel-space UNet on 32x32 shapes (shipped to 2026-11-23)."""
    # One thread beside pretrain-synth: 2.5 s per batch-16 step, ~1450 steps in an hour. The first run
    # (batch 32, 1050 steps, 32 GroupNorm groups = one channel per group at width 32) reached colour 0.88
    # but shape 0.22 (chance 0.17). A latent model on a small AutoencoderKL (vae-shapes) was tried too:
    # after 500 steps its held-out reconstructions still judged colour 0.29 and shape 0.40, so an hour of
    # autoencoder training would have left no hour for the UNet.
    return PretrainConfig(
        world="shapes",
        out=Path("runs/pretrain-shapes"),
        prediction_type="v_prediction",
        snr_gamma=None,
        channels=(32, 64, 96),
        attention_levels=(1, 2),
        max_steps=1450,
        batch_size=16,
        lr=5e-4,
        lr_warmup_steps=100,
        checkpoint_every=100,
        sample_every=500,
        max_minutes=62,
    )


def pretrain_synth() -> PretrainConfig:
    """The one-hour CPU recipe of the ``synth`` base: a UNet on 80x64 log-mel spectrograms (hop 512)."""
    # Per sample, an 80x128 mel costs ~8x the MACs of a 32x32 RGB image with the same UNet, which would leave
    # ~400 batch-16 steps in an hour. Hop 512 (80x64) and a 16-channel top level bring it to ~1.5x. The vocoder
    # pays for it (benchmarks/bench_vocoder.py, 100 clips: sc 0.412 vs 0.334; eval judge on reconstructions
    # drums 0.91 vs 1.00, key 0.98 vs 1.00, tempo/mode/lead unchanged). 800 steps fill one hour on one
    # thread (3.8-4.6 s/step; 2.3 s on two), so the shipped model trained beside pretrain-shapes on the other core.
    return PretrainConfig(
        world="synth",
        out=Path("runs/pretrain-synth"),
        prediction_type="v_prediction",
        snr_gamma=None,
        mel_hop_length=512,
        channels=(16, 32, 64, 96),
        attention_levels=(2, 3),
        max_steps=800,
        batch_size=16,
        lr=6e-4,
        lr_warmup_steps=100,
        checkpoint_every=100,
        sample_every=400,
        max_minutes=62,
    )


def _on_one_gpu(config: PretrainConfig, name: str, **changes: Any) -> PretrainConfig:
    """``config`` as a GPU run ``runs/<name>``: no wall-clock budget, 200 warmup steps, no sample grids."""
    defaults = dict(lr_warmup_steps=200, checkpoint_every=200, sample_every=0, max_minutes=None)
    return replace(config, out=Path("runs") / name, **{**defaults, **changes})


def pretrain_shapes_gpu() -> PretrainConfig:
    """The shipped ``shapes`` base, stage 1 of 2: the one-hour CPU architecture at 31x the samples (one GPU)."""
    # On an H100 beside pretrain-synth-gpu: 3.9 steps/s with 5 data processes (`--set num_workers=5`); the
    # UNet is too small to fill the GPU, so per-step overhead, not arithmetic, sets the pace. On this 2-core
    # CPU a batch-512 step would take ~80 s. A latent model (vae-shapes at channels 32-64-128, 1500 steps:
    # PSNR 30.9 dB, but the eval judge names the shape of only 0.88 of its reconstructions) was tried beside
    # it and looked no better at the same step count; its autoencoder also overshoots the 20 MB budget.
    return _on_one_gpu(pretrain_shapes(), "pretrain-shapes-gpu", max_steps=1400, batch_size=512, lr=1e-3)


def pretrain_shapes_gpu_continue() -> PretrainConfig:
    """The shipped ``shapes`` base, stage 2 of 2: 1600 more steps from stage 1's EMA weights, at half its lr."""
    # 5.8 steps/s alone on an H100 with 13 data processes (`--set num_workers=13`)
    return replace(
        pretrain_shapes_gpu(),
        out=Path("runs/pretrain-shapes-gpu-continue"),
        init=Path("runs/pretrain-shapes-gpu/model"),
        max_steps=1600,
        lr=5e-4,
        lr_warmup_steps=100,
    )


def pretrain_synth_gpu() -> PretrainConfig:
    """The shipped ``synth`` base: a wider top level than the CPU recipe, 1900 batch-128 steps (one GPU)."""
    # 5.3 steps/s on an H100 beside pretrain-shapes-gpu with 9 data processes (`--set num_workers=9`): the
    # synth world renders at ~8.5 ms a clip on one core, so data processes, not the GPU, set the pace
    return _on_one_gpu(
        pretrain_synth(), "pretrain-synth-gpu", channels=(32, 48, 64, 96), max_steps=1900, batch_size=128, lr=8e-4
    )


def pretrain_synth_mode() -> PretrainConfig:
    """The shipped ``synth`` base, stage 2 of 2: 45 CPU minutes on mode pairs with counterfactual targets.

    Continues stage 1 (``pretrain-synth-gpu``). Each batch holds 8 tunes, each played in major and in minor with
    one noise draw; above t/T = 0.3 both captions see the first tune's noisy input and each is trained towards
    its own clip (``contrast_input=shared``), so only the caption can tell the model which mode to render; the
    pair-contrast term (weight 0.1) weighs that difference. Measured (docs/BASE_MODELS.md): held-out mode 0.483
    -> 0.800 at w = 4, with lead 0.967 and tempo 0.850. ``--set contrast_input=own`` is the earlier variant
    whose pairs keep their own inputs (mode stayed at chance).
    """
    return replace(
        pretrain_synth_gpu(),
        out=Path("runs/pretrain-synth-mode"),
        init=Path("runs/pretrain-synth-gpu/model"),
        contrast_attribute="mode",
        contrast_weight=0.1,
        contrast_input="shared",
        batch_size=16,
        lr=1e-4,
        lr_warmup_steps=20,
        ema_decay=0.995,
        max_steps=3000,
        max_minutes=45,
        checkpoint_every=100,
    )


def cfg_distill_shapes() -> CFGDistillConfig:
    """The unguided student of the embedded ``shapes`` model (β = 0: the quality student).

    ``--set diversity_weight=β`` trains a diversity student: the reward is backpropagated through the last two
    of eight sampler steps. The shipped pair distils ``shapes-reward`` at the refined setting (w = 3, guidance
    rescale 0.7, guided only at t/T <= 0.6; ``studio.models.zoo.REFINED_SHAPES_TEACHER`` holds the ``--set``
    flags): 400 steps each, ``shapes-quality`` with β = 0 and ``shapes-diversity`` with β = 0.5.
    """
    return CFGDistillConfig(
        base="shapes",
        out=Path("runs/cfg-distill-shapes"),
        guidance_scale=4.0,
        on_policy=0.75,
        rollout_steps=10,
        diversity_mode="backprop",
        max_steps=400,
        batch_size=8,
        lr=2e-4,
        lr_warmup_steps=20,
        checkpoint_every=50,
        sample_every=100,
        max_minutes=28,
    )


def cfg_distill_synth() -> CFGDistillConfig:
    """The unguided student of the embedded ``synth`` model (β = 0).

    The teacher is the shipped ``synth`` (stage 2) at w = 4, its best scale. The shipped ``synth-quality`` is
    distilled one step past it, three times as long as the default, with a quarter of its states on-policy
    (``--set guidance_scale=5 --set on_policy=0.25 --set max_steps=1200 --set max_minutes=45``), and is level
    with the teacher at w = 4 and 1.7 points above it at w = 5; the shipped ``synth-diversity`` is ``--set
    diversity_weight=0.5 --set max_minutes=45`` (400 steps).
    The diversity reward is backpropagated through the last two of eight sampler steps and the mel vocoder,
    whose Griffin-Lim phase is held fixed in the backward pass (two samples for each of 4 prompts per step).
    Through the last four (``--set backprop_steps=4``) its gain reaches the eval judge too, at a cost in
    adherence; through all eight, β = 0.5 loses the prompt (docs/CFG_DISTILL.md).
    ``--set diversity_mode=reinforce`` trains it by policy gradient instead; that student, the one shipped
    before, ended less diverse than its β = 0 partner (docs/CFG_DISTILL.md).
    """
    return CFGDistillConfig(
        base="synth",
        out=Path("runs/cfg-distill-synth"),
        guidance_scale=4.0,
        on_policy=0.75,
        rollout_steps=10,
        diversity_mode="backprop",
        diversity_prompts=4,
        max_steps=400,
        batch_size=8,
        lr=2e-4,
        lr_warmup_steps=20,
        checkpoint_every=50,
        sample_every=100,
        max_minutes=28,
    )


def reward_synth() -> RewardFinetuneConfig:
    """The embedded ``synth`` model finetuned on the reward judge's adherence, through the mel vocoder.

    Rollouts of 8 DDIM steps guided at w = 2, the reward backpropagated through all of them and the vocoder
    (Griffin-Lim phase held fixed), the pretraining loss on the same captions as anchor. Measured so far
    (docs/REWARD_FINETUNE.md): it lowers the eval judge's adherence on music, with these settings and with
    DRaFT-1 at lr 5e-5 and 1e-4; no music model is shipped from it.
    """
    return RewardFinetuneConfig(
        base="synth",
        out=Path("runs/reward-synth"),
        sample_steps=8,
        backprop_steps=8,
        max_steps=200,
        batch_size=8,
        lr=1e-4,
        lr_warmup_steps=10,
        checkpoint_every=25,
        sample_every=50,
        max_minutes=38,
    )


def reward_shapes() -> RewardFinetuneConfig:
    """The embedded ``shapes`` model finetuned on the reward judge's adherence (= the shipped ``shapes-reward``).

    Rollouts of 10 DDIM steps sampled as the base's best guided setting (w = 3, rescale 0.7, guided at t/T ≤ 0.6),
    the reward backpropagated through all 10 steps into the pixels (DRaFT-1, the last step only, did not lift
    adherence here: docs/REWARD_FINETUNE.md). The base anchor on the rollouts (``anchor_weight`` 1) kept each of
    four seeds above the base, where one of two seeds without it fell below; ``shapes-reward`` is a run without
    it (``--set anchor_weight=0``). 38 minutes on one CPU thread reach ~100 of the 400 steps.
    ``--set diversity_weight=2 --set batch_size=8`` (two rollouts per caption) raised diversity to 0.147-0.162
    (base 0.159, β = 0: 0.112-0.118) but fell below the base's adherence in both of two seeds, so it stays off.
    """
    return RewardFinetuneConfig(
        base="shapes",
        out=Path("runs/reward-shapes"),
        guidance_scale=3.0,
        guidance_rescale=0.7,
        guidance_interval=(0.0, 0.6),
        sample_steps=10,
        backprop_steps=10,
        anchor_weight=1.0,
        max_steps=400,
        batch_size=16,
        lr=1e-4,
        lr_warmup_steps=10,
        checkpoint_every=50,
        sample_every=100,
        max_minutes=38,
    )


#: What a DDPO recipe takes from its reward-backprop recipe: the same model, captions, reward, sampler and guidance,
#: the same rollouts per step (so ``reward_queries`` advance alike), optimiser schedule, budget and grids.
SHARED_WITH_REWARD = (
    "base", "world", "data_seed", "guidance_scale", "guidance_rescale", "guidance_interval", "sample_steps",
    "reward", "attributes", "batch_size", "lr", "lr_warmup_steps", "max_steps", "max_minutes", "checkpoint_every",
    "sample_every", "sample_prompts",
)  # fmt: skip


def _shared_with(recipe: RewardFinetuneConfig) -> dict[str, Any]:
    return {name: getattr(recipe, name) for name in SHARED_WITH_REWARD}


def ddpo_shapes() -> DDPOConfig:
    """DDPO (policy gradient, PPO) on ``reward-shapes``' reward, sampler and guidance: the baseline reward backprop
    is measured against at equal reward queries (the ``reward_queries`` column of both runs' ``log.csv``).

    Rounds of 16 trajectories (4 captions x 4), 10-step DDIM at η = 1 guided at w = 3 (rescale 0.7, t/T ≤ 0.6),
    PPO clip 1e-4 (the paper's), one update per round over all 9 stochastic steps. Every weight trains at
    ``reward-shapes``' lr, so the two recipes differ in the gradient estimator only; ``--set adapter.method=lora
    --set lr=3e-4`` is the paper's LoRA (rank 4 on the attention projections). Untuned: no run has measured it yet.
    """
    return DDPOConfig(
        **_shared_with(reward_shapes()),
        out=Path("runs/ddpo-shapes"),
        eta=1.0,
        samples_per_prompt=4,
        clip_range=1e-4,
        inner_epochs=1,
        timestep_fraction=1.0,
        stat_buffer_size=16,
        stat_min_count=4,
        adapter={"method": "full"},
    )


def ddpo_synth() -> DDPOConfig:
    """DDPO on ``reward-synth``'s reward, sampler and guidance (the music counterpart of ``ddpo-shapes``)."""
    return replace(ddpo_shapes(), **_shared_with(reward_synth()), out=Path("runs/ddpo-synth"))


def cfg_distill_musicgen() -> MusicgenDistillConfig:
    """The unguided student of a real MusicGen checkpoint (a template: needs the weights locally or cached).

    ``mixstudio train cfg-distill-musicgen --set base=facebook/musicgen-small`` distils γ = 3 guidance on the
    ``synth`` world's captions; ``--set diversity_weight=0.1`` adds the REINFORCE diversity term on the synth
    reward judge. Samples are 5 s (250 tokens at 50 Hz).
    """
    return MusicgenDistillConfig(
        base="facebook/musicgen-small",
        out=Path("runs/cfg-distill-musicgen"),
        guidance_scale=3.0,
        max_new_tokens=250,
        max_steps=500,
        batch_size=8,
        lr=1e-5,
        lr_warmup_steps=20,
        checkpoint_every=100,
    )


def finetune() -> FinetuneConfig:
    """DreamBooth-style personalisation of the embedded ``shapes`` model with a LoRA (any method via --set).

    ``mixstudio train finetune --set data.dir=concept/ --set adapter.method=oft --set adapter.block_size=8``
    """
    return FinetuneConfig(
        base="shapes",
        out=Path("runs/finetune"),
        adapter={"method": "lora"},  # method defaults only, so --set adapter.method=oft leaves no LoRA keys
        prior_weight=1.0,
        class_samples=32,
        max_steps=300,
        batch_size=4,
        lr=1e-3,
        lr_warmup_steps=10,
        checkpoint_every=100,
        sample_every=100,
    )


def separate_synth() -> SeparateConfig:
    """A source separator for the synth world's drums, bass and lead (band-split RNN; ``--set model=hdemucs``).

    45 minutes on one CPU thread, validation SDR every 500 steps; the shipped ``synth-sep`` is this run. The HDemucs
    baseline (``separate-synth-hdemucs``) trains on the same data for the same wall-clock budget.
    """
    return SeparateConfig(
        out=Path("runs/separate-synth"),
        model="bsrnn",
        max_steps=100_000,
        max_minutes=45,
        checkpoint_every=250,
        sample_every=500,
        log_every=25,
    )


def separate_synth_hdemucs() -> SeparateConfig:
    """The HDemucs baseline of ``separate-synth``: the same data and wall-clock budget, torchaudio's architecture."""
    return replace(separate_synth(), out=Path("runs/separate-synth-hdemucs"), model="hdemucs")


def msdm_synth() -> MSDMConfig:
    """A multi-source diffusion model of the synth world's drums, bass and lead (generates, accompanies, separates).

    45 minutes on one CPU thread: a batch-8 step of the default model (tight STFT n_fft 512, 4x4 patches, UNet levels
    32-64-128) measured 1.06-1.21 s (data, captions, forward, backward, EMA) on one thread of a shared 2-core machine
    (docs/MSDM.md), so about 2,200 steps; validation separation and a generated grid every 500 steps (23 s each).
    """
    return MSDMConfig(
        out=Path("runs/msdm-synth"),
        max_steps=100_000,
        max_minutes=45,
        checkpoint_every=250,
        sample_every=500,
        log_every=25,
    )


def moa_shapes() -> MoAConfig:
    """Mixture-of-attention on the embedded ``shapes`` model, encoder mode: many procedural subjects, each from one
    reference image (``studio.worlds.concept``); held-out subjects then need no training.

    ``--set mode=subject --set data.dir=subject/`` trains one subject's branches instead (``mixstudio world shapes
    --subject NAME`` writes its images and masks); ``--set init=runs/moa-shapes`` starts it from the encoder run.
    """
    return MoAConfig(
        out=Path("runs/moa-shapes"),
        max_steps=100_000,
        max_minutes=45,
        batch_size=16,
        lr=3e-4,
        lr_warmup_steps=50,
        checkpoint_every=250,
        sample_every=500,
        log_every=25,
    )


#: The one place a recipe name maps to the function that builds its config.
RECIPES: dict[str, Callable[[], Any]] = {
    **{f"judge-{world}-{role}": _judge(world, role) for world in ("shapes", "synth") for role in ("reward", "eval")},
    "vae-shapes": vae_shapes,
    "pretrain-shapes": pretrain_shapes,
    "pretrain-synth": pretrain_synth,
    "pretrain-shapes-gpu": pretrain_shapes_gpu,
    "pretrain-shapes-gpu-continue": pretrain_shapes_gpu_continue,
    "pretrain-synth-gpu": pretrain_synth_gpu,
    "pretrain-synth-mode": pretrain_synth_mode,
    "cfg-distill-shapes": cfg_distill_shapes,
    "cfg-distill-synth": cfg_distill_synth,
    "cfg-distill-musicgen": cfg_distill_musicgen,
    "reward-shapes": reward_shapes,
    "reward-synth": reward_synth,
    "ddpo-shapes": ddpo_shapes,
    "ddpo-synth": ddpo_synth,
    "finetune": finetune,
    "separate-synth": separate_synth,
    "separate-synth-hdemucs": separate_synth_hdemucs,
    "msdm-synth": msdm_synth,
    "moa-shapes": moa_shapes,
}


def get_recipe(name: str) -> Any:
    """The config of recipe ``name``.

    Raises:
        ValueError: naming the unknown recipe and the known ones.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; use one of {sorted(RECIPES)}")
    return RECIPES[name]()


def run_config(config: Any, command: str = "") -> Any:
    """Run the trainer that owns ``config``'s type (:data:`TRAINERS`); returns its final metrics.

    Raises:
        ValueError: for a config type no trainer owns.
    """
    from studio.config import check_finite_fields
    from studio.judges.train import train_judge
    from studio.trainers.launch import run_trainer

    if isinstance(config, JudgeTrainConfig):  # judges train with their own short loop (no diffusion model)
        check_finite_fields(config)
        return train_judge(config, command=command)
    trainer = TRAINERS.get(type(config))
    if trainer is None:
        raise ValueError(
            f"no trainer for config type {type(config).__name__}; known: {[c.__name__ for c in TRAINERS]}"
        )
    return run_trainer(trainer(config, command=command))
