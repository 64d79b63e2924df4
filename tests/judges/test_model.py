import math

import pytest
import torch

from studio.judges.model import Judge, judge_loss, semitone_filterbank

ATTRS = {"colour": ["red", "blue"], "shape": ["circle", "square", "star"]}


def test_semitone_filterbank_puts_a_tone_in_its_semitone_bin():
    fb = semitone_filterbank(n_fft=2048, sample_rate=16000, f_min=32.70319566, n_bins=96)
    assert fb.shape == (1025, 96)
    t = torch.arange(32768) / 16000
    for midi in (36, 45, 57, 69, 81, 93):  # C2 .. A6; below ~100 Hz one FFT bin spans two semitones
        freq = 440.0 * 2 ** ((midi - 69) / 12)
        spec = (
            torch.stft(
                torch.sin(2 * math.pi * freq * t), 2048, 256, window=torch.hann_window(2048), return_complex=True
            )
            .abs()
            .pow(2)
            .mean(-1)
        )
        energy = spec @ fb
        tolerance = 1 if freq < 100 else 0
        assert abs(int(energy.argmax()) - (midi - 24)) <= tolerance  # bin 0 is C1 (MIDI 24)


def test_image_judge_outputs_grads_and_round_trip(tmp_path):
    torch.manual_seed(0)
    judge = Judge(world="shapes", modality="image", attributes=ATTRS, width=8, embed_dim=16)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    out = judge(x)
    assert {k: v.shape for k, v in out.logits.items()} == {"colour": (4, 2), "shape": (4, 3)}
    assert out.embedding.shape == (4, 16)
    loss = judge_loss(out, {"colour": torch.tensor([0, 1, 0, 1]), "shape": torch.tensor([0, 1, 2, 0])})
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in judge.parameters())

    judge.eval()
    judge.save_pretrained(tmp_path)
    loaded = Judge.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(x).embedding, judge(x).embedding)
    labels, emb = loaded.predict(x, batch_size=3)
    assert len(labels) == 4 and set(labels[0]) == set(ATTRS) and emb.shape == (4, 16)


def test_audio_judge_is_loudness_invariant_and_differentiable_in_its_input():
    torch.manual_seed(0)
    judge = Judge(world="synth", modality="audio", attributes=ATTRS, width=8, embed_dim=16).eval()
    audio = torch.randn(2, 16384) * 0.1
    torch.testing.assert_close(judge(audio).embedding, judge(audio * 4.0).embedding, atol=1e-4, rtol=1e-4)
    audio.requires_grad_()
    judge(audio).embedding.sum().backward()
    assert audio.grad is not None and audio.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [torch.zeros(2, 1, 32, 32), torch.zeros(3, 32)])
def test_judge_rejects_wrong_input_shapes(bad):
    with pytest.raises(ValueError, match="expects"):
        Judge(world="shapes", modality="image", attributes=ATTRS, width=4)(bad)
