"""StudioAttnProcessor in diffusers UNets: switching backends changes which function runs, never the output.

Every comparison is against the same model with diffusers' stock ``AttnProcessor2_0`` (or the sdpa backend),
within ``studio.kernels.TOLERANCES``. The ``triton`` backend runs interpreted on CPU (compiled on CUDA).
"""

import logging
from types import SimpleNamespace

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models import attention_dispatch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from studio.attention import BACKENDS, StudioAttnProcessor, get_backend, set_backend
from studio.kernels import TOLERANCES
from studio.models.zoo import model_dir

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels fixture compiles on CUDA, else interprets


def assert_close(actual, expected, what=""):
    tol = TOLERANCES[torch.float32]
    torch.testing.assert_close(actual, expected, atol=tol.atol, rtol=tol.rtol, msg=lambda m: f"{what}: {m}")


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def tiny_sd_unet() -> UNet2DConditionModel:
    """Stable Diffusion's layout in miniature: cross-attention at every level, 77 text tokens, head dims 20 and 40."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(40, 80),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    ).to(DEVICE)


def sd_inputs():
    return randn(2, 4, 8, 8), torch.tensor([10, 900], device=DEVICE), randn(2, 77, 32, seed=1)


@pytest.fixture(scope="module")
def shapes_unet():
    return UNet2DConditionModel.from_pretrained(model_dir("shapes"), subfolder="unet").to(DEVICE)


def shapes_inputs(batch: int = 2):
    """The shapes pipeline's call: 32 px RGB, MiniLM states (384) with a padding mask, as encode_text makes it."""
    mask = torch.ones(2, 12, device=DEVICE)
    mask[1, 7:] = 0
    states = randn(2, 12, 384, seed=1) * mask[..., None]
    x, t = randn(2, 3, 32, 32), torch.tensor([50, 700], device=DEVICE)
    return x[-batch:], t[-batch:], states[-batch:], mask[-batch:]


def spy_runs(monkeypatch) -> dict[str, int]:
    """Count the calls each backend's ``run`` receives."""
    calls = dict.fromkeys(BACKENDS, 0)
    for name, backend in BACKENDS.items():

        def counted(*args, name=name, run=backend.run):
            calls[name] += 1
            return run(*args)

        monkeypatch.setattr(backend, "run", counted)
    return calls


def stock(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    unet.set_attn_processor(AttnProcessor2_0())
    return unet


@pytest.mark.parametrize("name", ["sdpa", "reference", "triton"])
def test_tiny_sd_unet_switches_function_not_output(kernels, monkeypatch, name):
    unet = stock(tiny_sd_unet())
    with torch.no_grad():
        expected = unet(*sd_inputs()).sample
        layers = set_backend(unet, name)
        calls = spy_runs(monkeypatch)
        out = unet(*sd_inputs()).sample
    assert layers == 14 and get_backend(unet) == name
    assert calls == {**dict.fromkeys(BACKENDS, 0), name: layers}
    assert_close(out, expected, f"{name} vs AttnProcessor2_0")


@pytest.mark.parametrize("name", ["sdpa", "reference"])  # triton: in the training-step test below
def test_shapes_unet_switches_function_not_output(kernels, monkeypatch, shapes_unet, name):
    unet = stock(shapes_unet)
    x, t, states, mask = shapes_inputs()
    with torch.no_grad():
        expected = unet(x, t, states, encoder_attention_mask=mask).sample
        layers = set_backend(unet, name)
        calls = spy_runs(monkeypatch)
        out = unet(x, t, states, encoder_attention_mask=mask).sample
    assert calls[name] == layers == 14 and sum(calls.values()) == layers
    assert_close(out, expected, f"{name} vs AttnProcessor2_0")


def training_step(unet: UNet2DConditionModel) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One MSE step's prediction and parameter gradients, on the padded prompt (batch 1: the interpreter is slow)."""
    x, t, states, mask = shapes_inputs(batch=1)
    unet.zero_grad(set_to_none=True)
    pred = unet(x, t, states, encoder_attention_mask=mask).sample
    torch.nn.functional.mse_loss(pred, randn(*pred.shape, seed=5)).backward()
    return pred.detach(), {n: p.grad for n, p in unet.named_parameters() if p.grad is not None}


def test_shapes_unet_triton_training_step_matches_sdpa(kernels, monkeypatch, shapes_unet):
    """The shipped shapes UNet (head dims 16 and 24) with the triton backend: prediction and every gradient."""
    x, t, states, mask = shapes_inputs(batch=1)
    with torch.no_grad():
        expected = stock(shapes_unet)(x, t, states, encoder_attention_mask=mask).sample
    set_backend(shapes_unet, "sdpa")
    pred, grads = training_step(shapes_unet)
    set_backend(shapes_unet, "triton")
    calls = spy_runs(monkeypatch)
    pred_triton, grads_triton = training_step(shapes_unet)
    assert calls == {**dict.fromkeys(BACKENDS, 0), "triton": 14}
    assert_close(pred_triton, pred, "noise prediction vs sdpa")
    assert_close(pred_triton, expected, "noise prediction vs AttnProcessor2_0")
    assert grads_triton.keys() == grads.keys() and len(grads) > 100
    for name, grad in grads.items():
        assert_close(grads_triton[name], grad, name)


ATTENTION_LAYERS = {
    "self-4d-groupnorm-residual": lambda: Attention(
        32, heads=2, dim_head=16, norm_num_groups=8, residual_connection=True, rescale_output_factor=2.0, bias=True
    ),
    "cross-layernorm-qknorm": lambda: Attention(
        32, cross_attention_dim=24, heads=2, dim_head=40, cross_attention_norm="layer_norm", qk_norm="layer_norm"
    ),
    "spatial-norm": lambda: Attention(32, heads=1, dim_head=32, spatial_norm_dim=4, residual_connection=True),
}


@pytest.mark.parametrize("variant", list(ATTENTION_LAYERS))
@pytest.mark.parametrize("name", ["sdpa", "reference", "triton"])
def test_processor_reproduces_attn_processor_2_0(kernels, variant, name):
    torch.manual_seed(0)
    layer = ATTENTION_LAYERS[variant]().to(DEVICE)
    kwargs = {}
    if variant.startswith("cross"):
        states = randn(2, 9, 32)
        kwargs = {"encoder_hidden_states": randn(2, 77, 24, seed=1), "attention_mask": torch.zeros(2, 1, 77)}
        kwargs["attention_mask"][1, :, 50:] = -10000.0
        kwargs["attention_mask"] = kwargs["attention_mask"].to(DEVICE)
    else:
        states = randn(2, 32, 3, 5)  # (B, C, H, W): 15 tokens
        if variant == "spatial-norm":
            kwargs = {"temb": randn(2, 4, 2, 2, seed=2)}
    with torch.no_grad():
        layer.set_processor(AttnProcessor2_0())
        expected = layer(states, **kwargs)
        layer.set_processor(StudioAttnProcessor(name))
        out = layer(states, **kwargs)
    assert_close(out, expected, f"{variant} / {name}")


def test_diffusers_set_attention_backend_reaches_the_unet_once_ours_is_installed(monkeypatch):
    calls = []
    dispatch = attention_dispatch.dispatch_attention_fn
    monkeypatch.setattr(
        attention_dispatch, "dispatch_attention_fn", lambda *a, **k: calls.append(1) or dispatch(*a, **k)
    )
    unet = stock(tiny_sd_unet())
    previous = attention_dispatch._AttentionBackendRegistry._active_backend
    try:
        unet.set_attention_backend("native")  # the stock processors have no _attention_backend: skipped silently
        with torch.no_grad():
            expected = unet(*sd_inputs()).sample
        assert calls == []
        set_backend(unet, "reference")
        unet.set_attention_backend("native")
        assert get_backend(unet) == "diffusers:native"
        with torch.no_grad():
            out = unet(*sd_inputs()).sample
        assert len(calls) == 14
        assert_close(out, expected, "diffusers native through StudioAttnProcessor")
        unet.reset_attention_backend()
        assert get_backend(unet) == "reference"
        unet.set_attention_backend("native")
        set_backend(unet, "sdpa")  # the later call wins
        assert get_backend(unet) == "sdpa"
    finally:
        attention_dispatch._AttentionBackendRegistry.set_active_backend(previous)


def test_set_backend_on_a_pipeline_and_its_errors(caplog):
    unet = tiny_sd_unet()
    pipe = SimpleNamespace(unet=unet)
    assert get_backend(pipe) is None
    with pytest.raises(ValueError, match=r"unknown attention backend 'flash'; use one of \['reference', 'sdpa'"):
        set_backend(pipe, "flash")
    with pytest.raises(ValueError, match=r"expected a diffusers pipeline with a `unet` or a torch\.nn\.Module"):
        set_backend(SimpleNamespace(transformer=unet), "sdpa")
    with pytest.raises(ValueError, match="has no diffusers Attention layers"):
        set_backend(torch.nn.Linear(2, 2), "sdpa")

    class CustomProcessor(AttnProcessor2_0):
        pass

    unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.set_processor(CustomProcessor())
    with caplog.at_level(logging.WARNING, logger="studio.attention"):
        assert set_backend(pipe, "reference") == 13
    assert "1 attention layers kept their own processors (CustomProcessor x1)" in caplog.text
    assert get_backend(pipe) == "reference"
    unet.up_blocks[0].attentions[0].transformer_blocks[0].attn2.processor.backend = "sdpa"
    with pytest.raises(ValueError, match=r"different backends \['reference', 'sdpa'\]"):
        get_backend(pipe)
