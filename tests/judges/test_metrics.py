import numpy as np
import pytest
import scipy.linalg
import torch

from studio.judges.metrics import (
    frechet_distance,
    grouped_diversity,
    pairwise_diversity,
    prompt_adherence,
    sdr,
    si_sdr,
)


def test_prompt_adherence_counts_only_named_attributes():
    judged = [
        {"shape": "circle", "colour": "red"},
        {"shape": "star", "colour": "red"},
        {"shape": "ring", "colour": "blue"},
    ]
    targets = [{"shape": "circle", "colour": "red"}, {"shape": "circle"}, {"colour": "blue"}]
    result = prompt_adherence(judged, targets)
    assert result.overall == pytest.approx(2 / 3)
    assert result.per_attribute == {"colour": 1.0, "shape": 0.5}
    assert result.counts == {"colour": 2, "shape": 2}
    only_colour = prompt_adherence(judged, targets, attributes=["colour"])
    assert only_colour.overall == 1.0


def test_prompt_adherence_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one target per judged sample"):
        prompt_adherence([{"a": "b"}], [])


def test_pairwise_diversity_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(7, 5, generator=g)
    brute = np.mean(
        [1 - torch.cosine_similarity(e[i], e[j], dim=0).item() for i in range(7) for j in range(7) if i != j]
    )
    assert pairwise_diversity(e) == pytest.approx(brute, abs=1e-9)
    assert pairwise_diversity(e[:1].repeat(4, 1)) == pytest.approx(0.0, abs=1e-12)
    assert pairwise_diversity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)


def test_grouped_diversity_averages_groups_and_skips_singletons():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    assert grouped_diversity(e, ["a", "a", "b", "b", "c"]) == pytest.approx((1.0 + 0.0) / 2)
    assert grouped_diversity(e[:2], ["a", "b"]) is None


def reference_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_scipy_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) * 0.5 + 1.3
    ours = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert ours == pytest.approx(reference_fd(a, b), rel=1e-6)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_shifted_gaussians_is_squared_shift():
    a = torch.randn(20_000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shift = torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(25.0, rel=1e-6)


def test_sdr_known_values_and_gradient():
    ref = torch.sin(torch.linspace(0, 100, 16000, dtype=torch.float64))
    noise = torch.randn(16000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = noise / noise.norm() * ref.norm() * 10 ** (-20 / 20)  # exactly 20 dB below
    assert sdr(ref + noise, ref).item() == pytest.approx(20.0, abs=1e-6)
    est = (ref + noise).requires_grad_()
    torch.autograd.gradcheck(lambda x: sdr(x, ref), (est,))


def test_si_sdr_is_scale_invariant_and_sdr_is_not():
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(2, 4000, generator=g, dtype=torch.float64)
    est = ref + 0.1 * torch.randn(2, 4000, generator=g, dtype=torch.float64)
    assert torch.allclose(si_sdr(3.0 * est, ref), si_sdr(est, ref), atol=1e-9)
    assert not torch.allclose(sdr(3.0 * est, ref), sdr(est, ref), atol=1.0)
    # si-sdr of a pure scaling is (numerically) infinite; of orthogonal noise it is the power ratio
    orth = torch.randn(4000, generator=g, dtype=torch.float64)
    r = ref[0] - ref[0].mean()
    orth = orth - orth.mean()
    orth = orth - (orth @ r) / (r @ r) * r
    orth = orth / orth.norm() * r.norm()  # 0 dB
    assert si_sdr(r + orth, r).item() == pytest.approx(0.0, abs=1e-6)
    x = est.clone().requires_grad_()
    torch.autograd.gradcheck(lambda e: si_sdr(e, ref), (x,))
