"""Rewards through the embedders: the music reward's gradient (Griffin-Lim phase held fixed) is useful."""

import types

import pytest
import torch

from studio.models.audio import MelCodec
from studio.models.zoo import model_dir
from studio.trainers.rewards import JudgeEmbedder, pair_diversity
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
