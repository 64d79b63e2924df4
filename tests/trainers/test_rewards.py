"""Rewards through the embedders: the music reward's gradient (Griffin-Lim phase held fixed) is useful."""

import math
import types

import pytest
import torch

from studio.models.audio import MelCodec
from studio.models.zoo import model_dir
from studio.trainers.rewards import JudgeEmbedder, label_log_likelihood, pair_diversity
from studio.worlds import get_world, sample_seed


@pytest.fixture(scope="module")
def music_embedder() -> tuple[MelCodec, JudgeEmbedder]:
    codec = MelCodec.from_pretrained(model_dir("synth") / "codec")
    return codec, JudgeEmbedder(types.SimpleNamespace(codec=codec), "synth", "reward")


def test_pair_diversity_is_one_minus_cosine():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    torch.testing.assert_close(pair_diversity(a, b), torch.tensor([0.0, 1.0, 2.0]))


def test_music_diversity_gradient_raises_the_reward_of_re_decoded_clips(music_embedder):
    """Ascending the straight-through gradient (phase fixed) raises the reward measured with a fresh
    Griffin-Lim phase; random steps of the same size do not. Measured: 0.40 → 0.57, random 0.40."""
    codec, embedder = music_embedder
    world = get_world("synth")
    clips = torch.stack([torch.from_numpy(world.sample(sample_seed(0, i)).data) for i in range(8)])
    start = codec.encode(clips)

    def reward(mel: torch.Tensor) -> torch.Tensor:
        embedding = embedder(mel)
        return pair_diversity(embedding[0::2], embedding[1::2]).mean()

    def climb(random: bool) -> torch.Tensor:
        mel, noise = start.clone(), torch.Generator().manual_seed(0)
        for _ in range(5):
            mel.requires_grad_(True)
            (grad,) = torch.autograd.grad(reward(mel), mel)
            if random:
                grad = torch.randn(grad.shape, generator=noise) * (grad != 0)
            with torch.no_grad():
                mel = (mel + 0.5 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(-1, 1)
        with torch.no_grad():
            return reward(mel)

    with torch.no_grad():
        before = reward(start)
    ascended, wandered = climb(random=False), climb(random=True)
    assert ascended > before + 0.08, (before, ascended)
    assert ascended > wandered + 0.08, (wandered, ascended)


def test_label_log_likelihood_is_the_mean_log_probability_of_the_named_values():
    vocabulary = {"colour": ["red", "blue"], "shape": ["circle", "star", "ring"]}
    logits = {
        "colour": torch.tensor([[0.0, 0.0], [2.0, -1.0], [0.3, 0.1]], requires_grad=True),
        "shape": torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], requires_grad=True),
    }
    targets = [{"colour": "red", "shape": "circle"}, {"shape": "star", "size": "big"}, {}]
    reward, hits = label_log_likelihood(logits, targets, vocabulary)
    log_softmax = {name: torch.log_softmax(value.detach(), -1) for name, value in logits.items()}
    expected_first = (log_softmax["colour"][0, 0] + log_softmax["shape"][0, 0]) / 2
    torch.testing.assert_close(
        reward.detach(), torch.stack([expected_first, log_softmax["shape"][1, 1], torch.tensor(0.0)])
    )
    # colour is a tie at row 0 (argmax picks "red"), shape "circle" wins; row 1 "star" wins; row 2 names nothing
    torch.testing.assert_close(hits, torch.tensor([1.0, 1.0, 1.0]))
    reward.sum().backward()
    # d/dlogits of log_softmax[label] / count = (onehot − softmax) / count; rows that name nothing get none
    softmax = torch.softmax(logits["shape"].detach(), -1)
    torch.testing.assert_close(logits["shape"].grad[0], (torch.tensor([1.0, 0, 0]) - softmax[0]) / 2)
    torch.testing.assert_close(logits["shape"].grad[1], torch.tensor([0.0, 1, 0]) - softmax[1])
    assert logits["colour"].grad[1:].abs().max() == 0 and logits["shape"].grad[2].abs().max() == 0


def test_label_log_likelihood_counts_misses():
    vocabulary = {"mode": ["major", "minor"]}
    logits = {"mode": torch.tensor([[1.0, 0.0], [1.0, 0.0]])}
    reward, hits = label_log_likelihood(logits, [{"mode": "major"}, {"mode": "minor"}], vocabulary)
    torch.testing.assert_close(hits, torch.tensor([1.0, 0.0]))
    assert reward[0] > math.log(0.5) > reward[1]
