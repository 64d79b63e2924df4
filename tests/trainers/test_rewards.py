"""Rewards through the embedders: the music reward's gradient (Griffin-Lim phase held fixed) is useful."""

import math
import textwrap
import types

import pytest
import torch

from studio.judges import load_judge
from studio.models.audio import MelCodec
from studio.models.zoo import model_dir
from studio.trainers.rewards import (
    REWARDS,
    AdherenceReward,
    DiversityReward,
    JudgeEmbedder,
    build_reward,
    check_reward,
    label_log_likelihood,
    pair_diversity,
    score,
)
from studio.worlds import get_world, sample_seed
from studio.worlds.base import to_tensor


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


# ---- one reward interface -----------------------------------------------------------------------------
@pytest.fixture
def own_rewards(tmp_path, monkeypatch) -> str:
    """A module of rewards a user brings: brightness, a non-callable, and a reward of the wrong shape."""
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            def brightness(samples, prompts):
                return samples.flatten(1).mean(1)

            THRESHOLD = 0.5

            def one_number(samples, prompts):
                return samples.mean()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def world_images(n: int) -> tuple[torch.Tensor, list[str]]:
    world = get_world("shapes")
    samples = [world.sample(sample_seed(5, i)) for i in range(n)]
    return torch.stack([to_tensor(s.data) for s in samples]), [s.caption for s in samples]


def test_the_named_rewards_are_the_judges_adherence_and_pair_diversity():
    assert set(REWARDS) == {"adherence", "diversity"}
    assert REWARDS["adherence"] is AdherenceReward and REWARDS["diversity"] is DiversityReward
    images, prompts = world_images(4)
    judged = load_judge("shapes", "reward")(images)
    world = get_world("shapes")
    expected, hits = label_log_likelihood(judged.logits, [world.parse_prompt(p) for p in prompts], world.attributes)
    scores = score(build_reward("adherence", "shapes"), images, prompts)
    torch.testing.assert_close(scores.reward, expected)
    torch.testing.assert_close(scores.logged["reward_judge_hits"], hits)
    only_colour = score(build_reward("adherence", "shapes", ("colour",)), images, prompts)
    assert not torch.allclose(only_colour.reward, expected)

    paired = [prompts[0], prompts[0], prompts[1], prompts[1]]
    diversity = score(build_reward("diversity", "shapes"), images, paired).reward
    pairs = pair_diversity(judged.embedding[0::2], judged.embedding[1::2])
    torch.testing.assert_close(diversity, pairs.repeat_interleave(2))
    with pytest.raises(ValueError, match="consecutive pairs of samples of one prompt"):
        score(build_reward("diversity", "shapes"), images, prompts)


def test_a_reward_by_import_path_is_used_as_it_is(own_rewards):
    images, prompts = world_images(3)
    reward = build_reward(f"{own_rewards}:brightness", "shapes")
    torch.testing.assert_close(score(reward, images, prompts).reward, images.flatten(1).mean(1))
    assert check_reward(f"{own_rewards}:brightness") == f"{own_rewards}:brightness"
    with pytest.raises(ValueError, match=r"the reward returned \(\) for 3 samples; a reward returns one score"):
        score(build_reward(f"{own_rewards}:one_number", "shapes"), images, prompts)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module_xyz:score", r"reward 'no_such_module_xyz:score' does not resolve \(No module named"),
        ("{module}:missing", r"reward 'my_rewards:missing' does not resolve \(module 'my_rewards' has no attribute"),
        ("{module}:THRESHOLD", "reward 'my_rewards:THRESHOLD' is a float, not a callable"),
        ("brightness", "reward 'brightness' is neither a known reward nor an import path"),
        ("", "reward must be one of"),
    ],
)
def test_a_reward_that_does_not_resolve_is_refused_in_one_line(own_rewards, name, message):
    with pytest.raises(ValueError, match=message) as refused:
        check_reward(name.format(module=own_rewards))
    assert "\n" not in str(refused.value) and "adherence" in str(refused.value)
