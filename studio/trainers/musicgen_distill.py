"""CFG distillation for autoregressive music models (MusicGen in transformers), with a diversity reward.

The student (a copy of the model) samples audio tokens *without* guidance; on every generated position of
every codebook it is pulled toward the frozen teacher's guided next-token distribution
``softmax(l_u + γ·(l_c − l_u))`` by the reverse KL, computed exactly over the vocabulary::

    L_distil = mean over valid (position, codebook) of KL(p_student ‖ p_teacher,γ)

On-policy: the positions are the student's own samples (teacher-forced afterwards in one pass), so it
learns where it actually goes at inference. Unconditional logits ``l_u`` use zeroed text states and mask,
exactly as ``MusicgenForConditionalGeneration.generate`` does for guidance.

Diversity (``β > 0``): two samples of each of ``diversity_prompts`` prompts are decoded to audio and
embedded; ``D = 1 − cos(E(a1), E(a2))`` is maximised by REINFORCE (the sampled tokens' log-probability
times the batch-centred reward). ``E`` is any :class:`WaveformEmbedder`; by default the ``synth`` world's
reward judge, resampled to its rate. The objective minimised is ``L_distil − β·D``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from studio.guidance import cfg_combine, check_guidance_scale
from studio.trainers.base import Trainer
from studio.trainers.config import TrainerConfig, sample_generator
from studio.trainers.rewards import pair_diversity, pooled_statistics
from studio.worlds import get_world, sample_seed

logger = logging.getLogger(__name__)

#: ``(B, T) waveforms at sample_rate -> (B, D) embeddings``.
WaveformEmbedder = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(kw_only=True)
class MusicgenDistillConfig(TrainerConfig):
    """Token-level CFG distillation of a MusicGen checkpoint.

    Attributes:
        base: a MusicGen folder or hub id (offline: cached), e.g. ``facebook/musicgen-small``.
        world: the world whose captions are the training prompts (and whose reward judge embeds audio).
        data_seed: base seed of the caption stream.
        guidance_scale: the teacher's ``γ`` (MusicGen's default is 3).
        max_new_tokens: audio frames per sample (MusicGen runs at 50 frames per second).
        diversity_weight: ``β``; 0 trains the pure distillation student.
        diversity_prompts: prompts per step that get two reward samples each (≥ 2: the baseline is the mean).
        export: also write the student here.
    """

    base: str = "facebook/musicgen-small"
    world: str = "synth"
    data_seed: int = 9876
    guidance_scale: float = 3.0
    max_new_tokens: int = 100
    diversity_weight: float = 0.0
    diversity_prompts: int = 2
    export: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_guidance_scale(self.guidance_scale)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.diversity_weight < 0:
            raise ValueError(f"diversity_weight must be >= 0, got {self.diversity_weight}")
        if self.diversity_weight > 0 and self.diversity_prompts < 2:
            raise ValueError("diversity_weight > 0 needs diversity_prompts >= 2 (the baseline is the batch mean)")


class JudgeWaveformEmbedder:
    """A world judge's embedding of waveforms at any sample rate (resampled to the judge's)."""

    def __init__(self, world: str, role: str = "reward"):
        from studio.judges import load_judge

        self.judge = load_judge(world, role).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        import torchaudio.functional as AF

        target = self.judge.config.sample_rate
        audio = AF.resample(audio.float(), sample_rate, target) if sample_rate != target else audio.float()
        return self.judge(audio).embedding


class MusicgenDistillTrainer(Trainer):
    """Trains an unguided MusicGen student against its frozen guided teacher (see :class:`MusicgenDistillConfig`)."""

    config: MusicgenDistillConfig

    def __init__(self, config: MusicgenDistillConfig, embedder: WaveformEmbedder | None = None, **kwargs):
        super().__init__(config, **kwargs)
        self.embedder = embedder

    def build(self) -> None:
        from transformers import AutoTokenizer, MusicgenForConditionalGeneration

        cfg = self.config
        self.world = get_world(cfg.world)
        try:
            self.teacher = MusicgenForConditionalGeneration.from_pretrained(cfg.base)
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.base)
        except OSError as err:
            raise ValueError(f"cannot load MusicGen {cfg.base!r} ({str(err).splitlines()[0]})") from None
        self.teacher.eval().requires_grad_(False)
        self.model = copy.deepcopy(self.teacher).requires_grad_(True)
        self.model.text_encoder.requires_grad_(False)  # the prompt encoder stays the teacher's
        self.model.audio_encoder.requires_grad_(False)
        decoder = self.teacher.config.decoder
        self.codebooks, self.pad_id = decoder.num_codebooks, decoder.pad_token_id
        self.start_id = self.teacher.generation_config.decoder_start_token_id
        if cfg.diversity_weight > 0 and self.embedder is None:
            self.embedder = JudgeWaveformEmbedder(self.world.name)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)

    # ---- pieces -----------------------------------------------------------------------------
    def prompts(self, indices: list[int]) -> list[str]:
        return [self.world.sample(sample_seed(self.config.data_seed, i)).caption for i in indices]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text states ``(B, L, D)`` (masked positions zeroed) and mask of the frozen text encoder."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.accelerator.device)
        states = self.teacher.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        return states * tokens.attention_mask[..., None], tokens.attention_mask

    def logits(self, model, states, mask, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(B·K, T, V)`` of token ids ``(B·K, T)`` given text states (teacher-forced)."""
        return model(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=ids).logits

    def delay_pattern(self, batch: int) -> torch.Tensor:
        """MusicGen's delay pattern ``(B·K, 1 + max_new_tokens)``: the forced token, or −1 where one is sampled."""
        decoder = self.accelerator.unwrap_model(self.model).decoder
        start = torch.full((batch * self.codebooks, 1), self.start_id, device=self.accelerator.device)
        _, pattern = decoder.build_delay_pattern_mask(start, self.start_id, max_length=1 + self.config.max_new_tokens)
        return pattern

    @torch.no_grad()
    def rollout(self, states, mask, generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's unguided samples: token ids ``(B·K, 1 + T)`` and the pattern (−1 = sampled position).

        Sampling uses the KV cache; each prompt's draws come from its own generator (one per prompt).
        """
        model = self.accelerator.unwrap_model(self.model)
        pattern = self.delay_pattern(states.shape[0])
        ids, cache = pattern[:, :1].clone(), None
        for t in range(1, pattern.shape[1]):
            out = model(
                encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=ids[:, -1:],
                past_key_values=cache, use_cache=True,
            )  # fmt: skip
            cache = out.past_key_values
            probs = out.logits[:, -1].float().softmax(-1).reshape(len(generators), self.codebooks, -1)
            draws = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)])
            token = torch.where(pattern[:, t] == -1, draws.reshape(-1), pattern[:, t])
            ids = torch.cat([ids, token[:, None]], dim=1)
        return ids, pattern

    def decode_audio(self, ids: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        """Waveforms ``(B, samples)`` of sampled ids: undo the delay pattern, then the audio codec."""
        model = self.accelerator.unwrap_model(self.model)
        batch = ids.shape[0] // self.codebooks
        sampled = pattern == -1
        codes = ids[sampled].reshape(batch, self.codebooks, -1)  # every codebook samples max_new_tokens − K + 1
        with torch.no_grad():
            audio = model.audio_encoder.decode(codes[None], audio_scales=[None] * batch).audio_values
        return audio[:, 0]

    def distill_loss(self, states, mask, ids, pattern) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean reverse KL to the guided teacher over sampled positions, and each sample's token log-probability."""
        null_states, null_mask = torch.zeros_like(states), torch.zeros_like(mask)
        student = self.logits(self.model, states, mask, ids[:, :-1]).float()
        with torch.no_grad():
            cond = self.logits(self.teacher, states, mask, ids[:, :-1]).float()
            uncond = self.logits(self.teacher, null_states, null_mask, ids[:, :-1]).float()
        guided = cfg_combine(uncond, cond, self.config.guidance_scale).log_softmax(-1)
        log_p = student.log_softmax(-1)
        kl = (log_p.exp() * (log_p - guided)).sum(-1)  # (B·K, T)
        is_sampled = pattern[:, 1:] == -1
        sampled = is_sampled.float()
        tokens = ids[:, 1:].masked_fill(~is_sampled, 0)  # forced delay tokens (the pad id) lie outside the vocab
        token_log_p = log_p.gather(-1, tokens[..., None]).squeeze(-1) * sampled
        per_sample = token_log_p.reshape(-1, self.codebooks, token_log_p.shape[-1]).sum(dim=(1, 2))
        return (kl * sampled).sum() / sampled.sum(), per_sample

    # ---- the step ---------------------------------------------------------------------------
    def train_step(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        # MusicGen's dropout is functional and keyed on `training`: the KL compares the student's and the
        # teacher's exact distributions, so the student trains in eval mode (no batch norm anywhere)
        self.model.eval()
        texts = self.prompts(indices)
        # the first `diversity_prompts` of the global batch are sampled twice, on whichever processes hold them
        reward_prompts = min(cfg.diversity_prompts, cfg.batch_size) if cfg.diversity_weight > 0 else 0
        mine = self.leading(indices, reward_prompts)
        texts = texts + [texts[k] for k in mine]
        gens = [sample_generator(cfg.seed, self.step, i) for i in indices]
        gens += [sample_generator(cfg.seed + 1, self.step, indices[k]) for k in mine]
        states, mask = self.encode(texts)
        ids, pattern = self.rollout(states, mask, gens)
        kl, log_p = self.distill_loss(states, mask, ids, pattern)
        metrics = {"kl": kl.item()}
        # data-parallel gradients are averaged over processes: weigh this process's samples by their share
        processes, n = self.accelerator.num_processes, len(indices)
        loss = kl * processes * len(texts) / (cfg.batch_size + reward_prompts)
        if reward_prompts:
            reward = torch.zeros(0, device=kl.device)
            if mine:
                audio = self.decode_audio(ids, pattern)
                embeddings = self.embedder(audio, self.teacher.config.audio_encoder.sampling_rate)
                reward = pair_diversity(embeddings[mine], embeddings[n:])
            baseline, _ = pooled_statistics(reward, self.accelerator)
            if mine:
                advantage = (reward - baseline).detach()
                pg = -(advantage * (log_p[mine] + log_p[n:])).sum() * processes / reward_prompts
                loss = loss + cfg.diversity_weight * pg
            metrics["diversity"] = baseline
        return loss, metrics

    # ---- checkpoints and export -------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only the trainable weights: the frozen text and audio encoders (and T5's tied embedding) stay out."""
        model = self.accelerator.unwrap_model(self.model)
        return {k: p.detach().cpu().contiguous() for k, p in model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        model = self.accelerator.unwrap_model(self.model)
        expected = {k for k, p in model.named_parameters() if p.requires_grad}
        if set(state) != expected:
            raise ValueError(f"checkpoint does not match this student: {len(set(state) ^ expected)} weights differ")
        model.load_state_dict(state, strict=False)

    def export(self, metrics: dict[str, float]) -> Path:
        """Write the student (a standard MusicGen folder with its tokenizer) to ``out/model`` and ``export``."""
        model = self.accelerator.unwrap_model(self.model)

        def save(folder: Path) -> None:
            model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)

        return self.write_model(save, metrics, None)
