import pytest
import torch

from studio.guidance import Guidance, cfg_combine, in_guidance_interval, rescale_guided, split_guided


def _predictions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    uncond = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    cond = uncond + 0.5 * torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    return uncond, cond


def test_rescale_matches_the_conditional_std_at_phi_one_and_is_linear_in_phi():
    uncond, cond = _predictions()
    guided = cfg_combine(uncond, cond, 6.0)
    assert torch.equal(rescale_guided(guided, cond, 0.0), guided)
    full = rescale_guided(guided, cond, 1.0)
    dims = (1, 2, 3)
    torch.testing.assert_close(full.std(dim=dims), cond.std(dim=dims))  # per sample, not over the batch
    assert not torch.allclose(guided.std(dim=dims), cond.std(dim=dims))
    # the direction of each sample's guided prediction is kept: only its scale changes
    cos = torch.nn.functional.cosine_similarity(full.flatten(1), guided.flatten(1))
    torch.testing.assert_close(cos, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(rescale_guided(guided, cond, 0.3), 0.7 * guided + 0.3 * full)
    torch.testing.assert_close(split_guided(torch.cat([uncond, cond]), 6.0, 0.3), 0.7 * guided + 0.3 * full)


def test_rescale_gradients():
    uncond, cond = _predictions(1)
    guided = cfg_combine(uncond, cond, 4.0).requires_grad_()
    cond = cond.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda g, c: rescale_guided(g, c, 0.7), (guided, cond))


def test_guidance_interval_selects_steps_by_noise_level():
    guidance = Guidance(scale=3.0, interval=(0.0, 0.6))
    assert [guidance.guides_at(t, 1000) for t in (999, 601, 600, 300, 0)] == [False, False, True, True, True]
    assert not Guidance(scale=1.0).guides_at(500, 1000)  # w = 1 never needs the unconditional branch
    assert in_guidance_interval(torch.tensor(250), 1000, (0.25, 0.5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": float("inf")}, "guidance_scale must be a finite number"),
        ({"rescale": 1.5}, r"guidance_rescale must be a number in \[0, 1\]"),
        ({"rescale": -0.1}, r"guidance_rescale must be a number in \[0, 1\]"),
        ({"interval": (0.6, 0.2)}, "guidance_interval must satisfy 0 <= low < high <= 1"),
        ({"interval": (0.0, 2.0)}, "guidance_interval must satisfy 0 <= low < high <= 1"),
        ({"interval": (0.5,)}, "guidance_interval must be two numbers"),
        ({"interval": "ab"}, "guidance_interval must be two numbers"),
    ],
)
def test_bad_guidance_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Guidance(**kwargs)


def test_refinements_name_what_differs_from_plain_guidance():
    assert Guidance(3.0).refinements() == []
    assert Guidance(3.0, 0.7, [0, 0.6]).refinements() == ["rescale φ=0.7", "guided at t/T in [0, 0.6] only"]
    assert Guidance(2.0, interval=(0.25, 1.0)).refinements() == ["guided at t/T in [0.25, 1] only"]
