import pytest
import torch

from studio.separation import BandSplitRNN, BlendSeparator, blend_weights, fit_blend, load_separator


def _members():
    torch.manual_seed(0)
    small = {"segment_samples": 4000, "bands": ((8000.0, 1000.0),), "features": 8, "hidden": 8, "layers": 1}
    return [BandSplitRNN(**small, mask_hidden=8).eval(), BandSplitRNN(**small, mask_hidden=12).eval()]


def test_blend_weights_recover_a_known_per_stem_mixture_of_estimates():
    torch.manual_seed(0)
    estimates = torch.randn(5, 3, 2, 1, 400)  # (N, S, M, C, T)
    truth = torch.tensor([[0.7, 0.3], [1.0, 0.0], [-0.2, 1.5]])
    references = torch.einsum("nsmct,sm->nsct", estimates, truth)
    torch.testing.assert_close(blend_weights(estimates, references), truth, atol=1e-5, rtol=0)
    # two identical members: the minimum-norm split of the weight
    twins = estimates[:, :, :1].expand(-1, -1, 2, -1, -1)
    torch.testing.assert_close(blend_weights(twins, twins[:, :, 0]), torch.full((3, 2), 0.5), atol=1e-5, rtol=0)


def test_fit_blend_finds_the_weights_and_never_does_worse_than_a_member(tmp_path):
    members = _members()
    torch.manual_seed(1)
    mixes = torch.randn(6, 1, 4000)
    with torch.no_grad():
        a, b = (m(mixes) for m in members)
    truth = torch.tensor([0.25, 0.5, 0.9])[None, :, None, None]
    references = truth * a + (1 - truth) * b + 0.001 * torch.randn_like(a)
    blend = fit_blend(members, mixes, references, batch_size=4)
    torch.testing.assert_close(blend.weights[:, 0], truth.flatten(), atol=1e-2, rtol=0)
    with torch.no_grad():
        error = (blend(mixes) - references).square().sum()
        assert error <= min((a - references).square().sum(), (b - references).square().sum())
    blend.save_pretrained(tmp_path)
    loaded = load_separator(tmp_path)
    assert isinstance(loaded, BlendSeparator) and len(loaded.members) == 2
    torch.testing.assert_close(loaded.weights, blend.weights, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mixes), blend(mixes), atol=0, rtol=0)


def test_blend_refuses_members_that_do_not_match():
    members = _members()
    other = BandSplitRNN(sources=["x", "y", "z"], features=8, hidden=8, layers=1, mask_hidden=8)
    with pytest.raises(ValueError, match="share sources"):
        BlendSeparator.from_members([members[0], other])
    with pytest.raises(ValueError, match=r"\(sources, members\)"):
        BlendSeparator.from_members(members, torch.ones(3, 3))
    with pytest.raises(ValueError, match="at least one"):
        BlendSeparator.from_members([])
