"""Token-level CFG distillation of a tiny randomly initialised MusicGen built here (offline)."""

import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import MusicgenForConditionalGeneration

from studio.trainers.musicgen_distill import MusicgenDistillConfig, MusicgenDistillTrainer

VOCAB, CODEBOOKS = 16, 2  # of the tiny_musicgen fixture (tests/conftest.py)


def tiny_config(folder, out, **overrides) -> MusicgenDistillConfig:
    fields = {"base": str(folder), "out": out, "max_new_tokens": 12, "batch_size": 4, "lr": 1e-2, "max_steps": 20}
    return MusicgenDistillConfig(**{**fields, "checkpoint_every": 100, "guidance_scale": 3.0, **overrides})


def setup(folder, out, **overrides) -> MusicgenDistillTrainer:
    trainer = MusicgenDistillTrainer(tiny_config(folder, out, **overrides))
    trainer.setup()
    return trainer


def fixed_batch_kl(trainer, seed=123) -> float:
    """KL of the student to the guided teacher on a fixed batch of student samples (no update)."""
    texts = trainer.prompts([1000, 1001, 1002])
    states, mask = trainer.encode(texts)
    ids, pattern = trainer.rollout(states, mask, [torch.Generator().manual_seed(seed + i) for i in range(3)])
    with torch.no_grad():
        kl, _ = trainer.distill_loss(states, mask, ids, pattern)
    return kl.item()


def test_the_kl_is_zero_at_init_without_guidance_and_positive_with_it(tiny_musicgen, tmp_path):
    assert fixed_batch_kl(setup(tiny_musicgen, tmp_path / "a", guidance_scale=1.0)) == pytest.approx(0, abs=1e-6)
    assert fixed_batch_kl(setup(tiny_musicgen, tmp_path / "b")) > 1e-4


def test_rollout_follows_the_delay_pattern_and_the_cached_sampler_matches_full_recompute(tiny_musicgen, tmp_path):
    trainer = setup(tiny_musicgen, tmp_path)
    states, mask = trainer.encode(trainer.prompts([0, 1]))
    ids, pattern = trainer.rollout(states, mask, [torch.Generator().manual_seed(i) for i in range(2)])
    assert ids.shape == (2 * CODEBOOKS, 13)
    forced = pattern != -1
    assert torch.equal(ids[forced], pattern[forced])  # delays hold the pad token
    assert (ids[~forced] < VOCAB).all()
    # each sampled token has the probability the full (uncached) forward gives it at that position
    with torch.no_grad():
        full = trainer.logits(trainer.model, states, mask, ids[:, :-1]).softmax(-1)
    chosen = full.gather(-1, ids[:, 1:, None].clamp(max=VOCAB - 1)).squeeze(-1)[~forced[:, 1:]]
    assert (chosen > 0).all()
    # and the cached sampler's next-token distribution equals the full recompute at the last position
    model = trainer.accelerator.unwrap_model(trainer.model)
    cache, step_logits = None, []
    with torch.no_grad():
        for t in range(ids.shape[1] - 1):
            out = model(
                encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=ids[:, t : t + 1],
                past_key_values=cache, use_cache=True,
            )  # fmt: skip
            cache = out.past_key_values
            step_logits.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(step_logits, 1).softmax(-1), full, atol=1e-5, rtol=1e-4)
    audio = trainer.decode_audio(ids, pattern)
    assert audio.shape == (2, (12 - CODEBOOKS + 1) * 16)  # frames x hop (4 x 4)


def test_distillation_lowers_the_kl_to_the_guided_teacher_and_trains_only_the_decoder(tiny_musicgen, tmp_path):
    trainer = setup(tiny_musicgen, tmp_path)
    before = fixed_batch_kl(trainer)
    teacher = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    text_encoder = {k: v.clone() for k, v in trainer.model.text_encoder.state_dict().items()}
    for _ in range(20):
        metrics = trainer.optimizer_step()
    after = fixed_batch_kl(trainer)
    print(f"KL to the guided teacher: {before:.3f} -> {after:.3f}")
    assert after < 0.5 * before, (before, after)
    assert all(torch.equal(v, trainer.teacher.state_dict()[k]) for k, v in teacher.items())
    assert all(torch.equal(v, trainer.model.text_encoder.state_dict()[k]) for k, v in text_encoder.items())
    assert metrics["kl"] >= 0


def test_diversity_reward_reaches_the_student_by_reinforce(tiny_musicgen, tmp_path):
    def spectrum_embedder(audio, sample_rate):  # any embedder fits the interface
        return torch.fft.rfft(audio).abs()[:, :32]

    grads = {}
    for beta in (0.0, 1.0):
        trainer = MusicgenDistillTrainer(
            tiny_config(tiny_musicgen, tmp_path / f"b{beta}", diversity_weight=beta), embedder=spectrum_embedder
        )
        trainer.setup()
        loss, metrics = trainer.train_step([0, 1, 2, 3])
        loss.backward()
        grads[beta] = torch.cat([p.grad.flatten() for p in trainer.model.decoder.parameters() if p.grad is not None])
    assert 0 <= metrics["diversity"] <= 2
    assert not torch.allclose(grads[0.0], grads[1.0])


def test_default_embedder_is_the_reward_judge_at_its_sample_rate(tiny_musicgen, tmp_path):
    trainer = setup(tiny_musicgen, tmp_path, diversity_weight=0.5, max_new_tokens=40)
    loss, metrics = trainer.train_step([0, 1, 2, 3])
    assert torch.isfinite(loss) and 0 <= metrics["diversity"] <= 2


def test_resume_replays_exactly_from_a_checkpoint_of_the_trainable_weights(tiny_musicgen, tmp_path):
    straight = setup(tiny_musicgen, tmp_path / "a", max_steps=3)
    for _ in range(3):
        straight.optimizer_step()
    first = setup(tiny_musicgen, tmp_path / "b", max_steps=3)
    for _ in range(2):
        first.optimizer_step()
    checkpoint = first.save_checkpoint()
    saved = load_file(checkpoint / "model.safetensors")
    assert saved and not any(k.startswith(("text_encoder.", "audio_encoder.")) for k in saved)
    resumed = setup(tiny_musicgen, tmp_path / "b", max_steps=3)
    assert resumed.step == 2
    resumed.optimizer_step()
    for k, v in straight.trainable_state().items():
        torch.testing.assert_close(resumed.trainable_state()[k], v, rtol=0, atol=0)


def test_export_is_a_musicgen_folder_with_the_students_weights(tiny_musicgen, tmp_path):
    trainer = setup(tiny_musicgen, tmp_path, max_steps=2)
    trainer.fit()
    loaded = MusicgenForConditionalGeneration.from_pretrained(tmp_path / "model")
    student = trainer.accelerator.unwrap_model(trainer.model)
    for k, v in student.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_bad_configs_are_refused(tiny_musicgen, tmp_path):
    with pytest.raises(ValueError, match="diversity_prompts >= 2"):
        tiny_config(tiny_musicgen, tmp_path, diversity_weight=1.0, diversity_prompts=1)
    with pytest.raises(ValueError, match="cannot load MusicGen"):
        setup(tmp_path / "missing", tmp_path / "out")


def test_the_recipe_runs_from_the_cli_on_any_musicgen_folder(tiny_musicgen, tmp_path, capsys, monkeypatch):
    from studio.cli import main

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    overrides = {"base": tiny_musicgen, "max_new_tokens": 8, "max_steps": 2, "batch_size": 2, "export": tmp_path / "s"}
    argv = ["--quiet", "train", "cfg-distill-musicgen", "--out", str(tmp_path / "run")]
    assert main([*argv, *[x for k, v in overrides.items() for x in ("--set", f"{k}={v}")]]) == 0
    assert "MusicgenDistillTrainer:" not in capsys.readouterr().err  # --quiet hides the training bar too
    assert "TQDM_DISABLE" not in os.environ  # and leaves the caller's environment as it found it
    assert MusicgenForConditionalGeneration.from_pretrained(tmp_path / "s").config.decoder.num_codebooks == CODEBOOKS
    assert (tmp_path / "run" / "model" / "train_metrics.json").is_file()
