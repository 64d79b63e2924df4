"""The merge contract, strength semantics, parameter counts and gradients of every method on every layer kind.

``method``, ``additive``, ``rotation`` and ``kind`` are parametrized by ``conftest.pytest_generate_tests``.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from studio.adapters import (
    METHODS,
    AdapterLayer,
    DiffuseKronAConfig,
    GOFTConfig,
    LoRAConfig,
    OFTConfig,
    QGOFTConfig,
)
from studio.adapters.givens import STAGES_ON_ROWS_WIDTH

SCALES = (0.0, 0.3, 1.0, 1.7, -0.5)

# LoKr sizes from PEFT's rule (factorize d_out and C_in; b2 = n·kh·kw; rank 2 is never < max(b1, n)/2 here, so w2
# is full): linear 12=3·4, 16=4·4 -> w1 3×4 + w2 4×4; conv1x1 12=3·4, 8=2·4 -> 3×2 + 4×4; conv3x3 6=2·3,
# 8=2·4 -> 2×2 + 3×36.
LOKR_PARAMS = {"linear": 3 * 4 + 4 * 4, "conv1x1": 3 * 2 + 4 * 4, "conv3x3": 2 * 2 + 3 * 36}


def wrap(kit, kind, method, randomized=True, name="a"):
    layer = AdapterLayer(kit.make_layer(kind))
    adapter = layer.add_adapter(name, kit.CONFIGS[method], generator=torch.Generator().manual_seed(0))
    if randomized:
        kit.randomize(adapter)
    return layer, adapter


def max_err(a, b):
    return (a - b).abs().max().item()


def test_every_method_has_a_test_config(kit):
    assert set(kit.CONFIGS) == set(METHODS)
    assert set(kit.ADDITIVE) == {m for m, (_, cls) in METHODS.items() if cls.additive}


def test_identity_at_init(kit, kind, method):
    layer, adapter = wrap(kit, kind, method, randomized=False)
    x = kit.make_input(kind)
    err = max_err(layer(x), layer.base_layer(x))
    if method == "ether":
        # ETHER starts as a reflection (paper, Sec. 3): not the identity, but exactly at distance 2 from it.
        eye = torch.eye(adapter.shape.d_in)
        assert err > 1e-2
        assert torch.linalg.matrix_norm(adapter.transform(1.0) - eye, ord=2).item() == pytest.approx(2.0, abs=1e-5)
    else:
        assert err <= kit.TOL["init"]


@pytest.mark.parametrize("scale", [1.0, -0.5])
def test_merge_unmerge_round_trip(kit, kind, method, scale):
    layer, _ = wrap(kit, kind, method)
    layer.set_scale("a", scale)
    x = kit.make_input(kind)
    original = layer.base_layer.weight.detach().clone()
    unmerged = layer(x)
    assert max_err(unmerged, layer.base_layer(x)) > 1e-3  # the adapter does something
    layer.merge()
    assert layer.merged_names == ["a"]
    merged = layer(x)
    assert max_err(merged, layer.base_layer(x)) == 0.0  # merged forward is the base layer
    assert max_err(merged, unmerged) <= kit.TOL["merge"]
    layer.unmerge()
    assert max_err(layer.base_layer.weight, original) <= kit.TOL["restore"]
    assert max_err(layer(x), unmerged) <= kit.TOL["merge"]


def test_scale_zero_gives_base_output(kit, kind, method):
    layer, _ = wrap(kit, kind, method)
    layer.set_scale("a", 0.0)
    x = kit.make_input(kind)
    assert max_err(layer(x), layer.base_layer(x)) <= kit.TOL["init"]


def test_additive_output_is_linear_in_scale(kit, kind, additive):
    layer, _ = wrap(kit, kind, additive)
    x = kit.make_input(kind)
    base, full = layer.base_layer(x), layer(x)
    for scale in (0.3, -0.5, 1.7, 2.0):
        layer.set_scale("a", scale)
        assert max_err(layer(x) - base, scale * (full - base)) <= kit.TOL["linearity"]


def test_rotations_stay_orthogonal_for_every_scale(kit, kind, rotation):
    _, adapter = wrap(kit, kind, rotation)
    eye = torch.eye(adapter.shape.d_in)
    for scale in SCALES:
        r = adapter.transform(scale)
        assert max_err(r.T @ r, eye) <= kit.TOL["orthogonal"], scale
        assert adapter.orthogonal(scale)
    assert max_err(adapter.transform(1.0), eye) > 1e-2
    assert max_err(adapter.transform(0.0), eye) == 0.0


def expected_parameter_count(method, kind, d_in, d_out):
    return {
        "lora": 3 * (d_in + d_out),
        "oft": (d_in // 4) * (4 * 3 // 2),
        "boft": 2 * (d_in // 4) * (4 * 3 // 2) + d_out,
        "goft": d_in - 1,
        "qgoft": 4 * (d_in - 1),
        "ether": d_in,
        "etherplus": 2 * d_in + 2 * d_out,
        "diffusekrona": 2 * 4 + (d_out // 2) * (d_in // 4),
        "lokr": LOKR_PARAMS[kind],
        "dense": d_out * d_in,
    }[method]


def test_parameter_count_matches_closed_form(kit, kind, method):
    layer, adapter = wrap(kit, kind, method, randomized=False)
    shape = layer.shape
    assert (shape.d_in, shape.d_out) == {"linear": (16, 12), "conv1x1": (8, 12), "conv3x3": (72, 6)}[kind]
    count = sum(p.numel() for p in adapter.parameters())
    assert count == expected_parameter_count(method, kind, shape.d_in, shape.d_out)


@pytest.mark.parametrize("on_weight", [False, True])
def test_gradcheck_wrt_adapter_parameters(kit, kind, method, on_weight):
    torch.manual_seed(0)
    layer = AdapterLayer(kit.make_layer(kind).double())
    layer.weight_path = on_weight  # k×k convs always transform the weight
    adapter = layer.add_adapter("a", kit.CONFIGS[method], generator=torch.Generator().manual_seed(0))
    kit.randomize(adapter)
    layer.set_scale("a", 0.8)
    names = [f"adapters.a.{n}" for n, _ in adapter.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in adapter.parameters())
    x = kit.make_input(kind, dtype=torch.float64)[:1]

    def forward(*values):
        return functional_call(layer, dict(zip(names, values, strict=True)), (x,))

    # fast_mode checks a random projection of the Jacobian (one vector-Jacobian product per input), which still
    # fails on a wrong gradient and keeps the 27 checks under a few seconds.
    assert torch.autograd.gradcheck(forward, params, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("kind", ["linear", "conv1x1"])
def test_weight_and_activation_paths_agree_in_value_and_gradient(kit, kind, method):
    layer, adapter = wrap(kit, kind, method)
    layer.set_scale("a", 0.8)
    x = kit.make_input(kind).requires_grad_()
    results = []
    for on_weight in (False, True):
        layer.weight_path = on_weight
        out = layer(x)
        results.append((out, torch.autograd.grad(out.square().sum(), [x, *adapter.parameters()])))
    (out_a, grads_a), (out_w, grads_w) = results
    assert max_err(out_a, out_w) <= kit.TOL["merge"]
    for grad_a, grad_w in zip(grads_a, grads_w, strict=True):
        assert max_err(grad_a, grad_w) <= kit.TOL["merge"] * (1 + grad_a.abs().max().item())


def test_multi_stage_adapters_move_to_the_weight_once_rows_outnumber_outputs(kit, method):
    layer, adapter = wrap(kit, "linear", method)
    active = [(adapter, 1.0)]
    few, many = torch.zeros(2, 6, 16), torch.zeros(2, 7, 16)  # 12 and 14 rows against 12 outputs
    assert not layer._on_weight(few, active)
    assert layer._on_weight(many, active) == (not (adapter.additive or adapter.rows_cheaply))
    layer.weight_path = False
    assert not layer._on_weight(many, active)


def test_the_givens_tree_stays_on_the_activations_of_wide_layers():
    for config in (GOFTConfig(), QGOFTConfig()):
        for width, on_rows in ((STAGES_ON_ROWS_WIDTH // 2, False), (STAGES_ON_ROWS_WIDTH, True)):
            layer = AdapterLayer(nn.Linear(width, width))
            adapter = layer.add_adapter("a", config)
            many = torch.zeros(2 * width, width)  # rows outnumber outputs
            assert layer._on_weight(many, [(adapter, 1.0)]) == (not on_rows), (config, width)


def dense_update(adapter, weight):
    """Apply one adapter to a flattened weight with dense matrices only (ΔW or L W Rᵀ)."""
    if adapter.additive:
        return weight + adapter.delta_weight(1.0)
    out = weight @ adapter.transform(1.0).T
    return adapter.output_transform(1.0) @ out if adapter.has_output_map else out


def functional(layer, weight, x):
    base = layer.base_layer
    if isinstance(base, nn.Linear):
        return F.linear(x, weight, base.bias)
    return F.conv2d(x, weight.reshape(base.weight.shape), base.bias, base.stride, base.padding)


@pytest.mark.parametrize("first, second", [("lora", "diffusekrona"), ("oft", "lora"), ("lokr", "boft")])
def test_adapters_compose_in_insertion_order(kit, kind, first, second):
    layer, a = wrap(kit, kind, first, name="first")
    b = layer.add_adapter("second", kit.CONFIGS[second], generator=torch.Generator().manual_seed(1))
    kit.randomize(b, seed=3)
    x = kit.make_input(kind)
    weight = layer.base_layer.weight.detach().reshape(layer.shape.d_out, -1)
    # Documented composition: W' = f_second(f_first(W)); two additive adapters add up.
    expected = functional(layer, dense_update(b, dense_update(a, weight)), x)
    assert max_err(layer(x), expected) <= kit.TOL["merge"]
    layer.merge()
    assert max_err(layer(x), expected) <= kit.TOL["merge"]
    layer.unmerge()
    assert max_err(layer.base_layer.weight.reshape(weight.shape), weight) <= kit.TOL["restore"]


def test_partial_merge_keeps_the_rest_applied(kit):
    layer, _ = wrap(kit, "linear", "lora", name="first")
    kit.randomize(layer.add_adapter("second", kit.CONFIGS["diffusekrona"]), seed=3)
    x = kit.make_input("linear")
    both = layer(x)
    layer.merge(["first"])
    assert layer.merged_names == ["first"]
    assert max_err(layer(x), both) <= kit.TOL["merge"]
    with pytest.raises(ValueError, match="already merged"):
        layer.merge(["first"])


def test_merge_refuses_non_finite_weights_and_names_the_adapter(kit, method):
    layer, adapter = wrap(kit, "linear", method, name=f"broken_{method}")
    with torch.no_grad():
        for param in adapter.parameters():
            param.fill_(math.nan)
    original = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match=f"broken_{method}"):
        layer.merge()
    assert layer.merged_names == []
    assert torch.equal(layer.base_layer.weight, original)


def test_disable_returns_base_and_unmerges(kit, method):
    layer, _ = wrap(kit, "linear", method)
    x = kit.make_input("linear")
    adapted = layer(x)
    original = layer.base_layer.weight.detach().clone()
    layer.merge()
    layer.disable()
    assert layer.merged_names == []
    assert max_err(layer.base_layer.weight, original) <= kit.TOL["restore"]
    assert torch.equal(layer(x), layer.base_layer(x))
    layer.enable()
    assert max_err(layer(x), adapted) <= kit.TOL["merge"]


def test_layer_refuses_bad_names_scales_and_states(kit):
    layer, _ = wrap(kit, "linear", "lora")
    for bad in ("", "a", "x.y"):
        with pytest.raises(ValueError, match="adapter name"):
            layer.add_adapter(bad, LoRAConfig())
    with pytest.raises(ValueError, match="finite"):
        layer.set_scale("a", math.inf)
    with pytest.raises(ValueError, match="no adapter named 'b'"):
        layer.set_scale("b", 1.0)
    layer.merge()
    with pytest.raises(ValueError, match="unmerge"):
        layer.set_scale("a", 0.5)
    with pytest.raises(ValueError, match="unmerge"):
        layer.delete_adapter("a")
    layer.unmerge()
    layer.delete_adapter("a")
    assert list(layer.adapters) == [] and layer.scales == {}


def test_layer_refuses_unsupported_bases_and_sizes():
    with pytest.raises(ValueError, match="groups=2"):
        AdapterLayer(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        AdapterLayer(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(TypeError, match="Embedding"):
        AdapterLayer(nn.Embedding(4, 4))
    layer = AdapterLayer(nn.Linear(12, 10))
    with pytest.raises(ValueError, match=r"OFTConfig.block_size=5 .* \(12\); use one of \[1, 2, 3, 4, 6, 12\]"):
        layer.add_adapter("a", OFTConfig(block_size=5))
    with pytest.raises(ValueError, match=r"a1=3 .* output features \(10\); use one of \[1, 2, 5, 10\]"):
        layer.add_adapter("a", DiffuseKronAConfig(a1=3, a2=4))
    assert list(layer.adapters) == []
