"""The trainers' differentiable DDIM sampler against diffusers' DDIMScheduler, and its gradients."""

import pytest
import torch
from diffusers import DDIMScheduler

from studio.sampling import DDIMSampler, ddim_step, ddim_timesteps, gaussian_log_prob, split_prediction


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_sampler_reproduces_diffusers_ddim(prediction_type, clip):
    kwargs = {"clip_sample": clip is not None, "prediction_type": prediction_type}
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", set_alpha_to_one=True, **kwargs)
    scheduler.set_timesteps(7)
    ours = DDIMSampler(scheduler.alphas_cumprod, prediction_type, steps=7, clip_x0=clip)
    assert torch.equal(ours.timesteps, scheduler.timesteps)

    weight = torch.randn(3, 3, 1, 1) * 0.3

    def predict(x, t):  # a fixed, t-dependent "model"
        return torch.nn.functional.conv2d(x, weight) * (1 + t.float().view(-1, 1, 1, 1) / 1000)

    x_ref = x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(scheduler.timesteps):
        x_ref = scheduler.step(predict(x_ref, t.expand(2)), t, x_ref, eta=0.0).prev_sample
        x, _ = ours.step(predict, x, i)
        torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)


def test_timesteps_and_bad_steps():
    assert ddim_timesteps(1000, 4).tolist() == [750, 500, 250, 0]
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(1000, 0)


def test_split_prediction_inverts_the_forward_process():
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a = torch.tensor([0.3, 0.9]).view(2, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    for output, kind in ((eps, "epsilon"), (v, "v_prediction")):
        got_x0, got_eps = split_prediction(output, x_t, a, kind)
        torch.testing.assert_close(got_x0, x0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_eps, eps, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prediction_type"):
        split_prediction(eps, x_t, a, "sample")


def test_eta_one_step_variance_is_the_ddpm_posterior_variance():
    a_t, a_prev = torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), 0.8)
    step = ddim_step(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), a_t, a_prev, "epsilon", eta=1.0)
    beta = 1 - a_t / a_prev  # DDPM posterior variance (1 - ᾱ_prev)/(1 - ᾱ_t) · β_t
    torch.testing.assert_close(step.std**2, ((1 - a_prev) / (1 - a_t) * beta).expand(1, 1, 2, 2))


def test_log_prob_matches_torch_distributions():
    x, mean, std = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2), torch.rand(3, 2, 2, 2) + 0.1
    expected = torch.distributions.Normal(mean, std).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), expected)


def test_truncated_backprop_gradients_match_full_graph_through_the_last_steps():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 2, 1).double()
    sampler = DDIMSampler(DDIMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double(), "epsilon", 5)
    x_T = torch.randn(2, 2, 4, 4, dtype=torch.float64)

    def predict(x, t):
        return net(x) * 0.5

    grads = []
    for checkpointed in (True, False):
        net.zero_grad()
        sampler.sample(predict, x_T, grad_steps=2, checkpointed=checkpointed).square().mean().backward()
        grads.append(net.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0

    # gradcheck the last two steps as a function of the weights (the first three are constants)
    with torch.no_grad():
        x = x_T
        for i in range(3):
            x, _ = sampler.step(predict, x, i)
    start = x

    def last_two(weight):
        def model(x_, t_):
            return torch.nn.functional.conv2d(x_, weight, net.bias) * 0.5

        y = start
        for i in (3, 4):
            y, _ = sampler.step(model, y, i)
        return y

    assert torch.autograd.gradcheck(last_two, (net.weight.detach().clone().requires_grad_(),))


def test_the_trajectory_holds_each_steps_input_state_detached():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 2, 1)
    sampler = DDIMSampler(DDIMScheduler().alphas_cumprod, "epsilon", 4)
    x_T = torch.randn(2, 2, 4, 4)

    def predict(x, t):
        return net(x)

    trajectory = []
    final = sampler.sample(predict, x_T, grad_steps=2, trajectory=trajectory)
    assert len(trajectory) == 4 and not any(x.requires_grad for x in trajectory)
    torch.testing.assert_close(trajectory[0], x_T, rtol=0, atol=0)
    with torch.no_grad():
        for i in range(4):
            following = sampler.step(predict, trajectory[i], i)[0]
            torch.testing.assert_close(following, trajectory[i + 1] if i < 3 else final, rtol=1e-6, atol=1e-6)
    # recording states changes nothing about the sample or its gradients
    final.square().mean().backward()
    grad = net.weight.grad.clone()
    net.zero_grad()
    again = sampler.sample(predict, x_T, grad_steps=2)
    again.square().mean().backward()
    torch.testing.assert_close(again, final, rtol=0, atol=0)
    torch.testing.assert_close(net.weight.grad, grad, rtol=0, atol=0)
