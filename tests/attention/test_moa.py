"""Mixture-of-attention: identity at init, the two-branch mix against diffusers' processor, where gradients go,
strength, prompts with an identifier, files, and sampling through ``studio.generate``."""

import copy

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from studio.attention.moa import (
    MoA,
    MoASettings,
    MoAState,
    SubjectPrompt,
    overlay,
    split_prompt,
    subject_token_index,
)
from studio.generation import generate
from studio.models.text import encode_text
from studio.pipelines import load_pipeline
from tests.tolerances import TOLERANCES, assert_close

FP32 = TOLERANCES["fp32"]


@pytest.fixture(scope="module")
def pipe(tiny_shapes_folder):
    pipe = load_pipeline(str(tiny_shapes_folder), "image")
    pipe.unet.requires_grad_(False)
    return pipe


def unet_inputs(pipe, prompts, seed=0):
    g = torch.Generator().manual_seed(seed)
    parsed = [split_prompt(p) for p in prompts]
    embeds, mask = encode_text(pipe.text_encoder, pipe.tokenizer, [p.text for p in parsed], "cpu")
    x = torch.randn(len(prompts), 3, 32, 32, generator=g)
    t = torch.tensor([700, 100][: len(prompts)])
    return x, t, embeds, mask, subject_token_index(pipe.tokenizer, parsed)


def perturbed(moa: MoA, seed: int = 1) -> MoA:
    """The MoA with every zero-initialised last layer randomised, so both branches and the router matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in moa.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return moa


def test_a_new_moa_is_the_base_model_for_any_router_and_subject(pipe):
    x, t, embeds, mask, index = unet_inputs(pipe, ["a sks shape on a navy background", "a red circle"])
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=embeds, encoder_attention_mask=mask).sample
        moa = MoA.create(pipe.unet, MoASettings(base="tiny"))
        for branch in moa.branches:  # any router: the two branches are equal at init
            branch.router.net[-1].bias.copy_(torch.tensor([0.0, 2.0]))
        references = torch.rand(2, 3, 32, 32) * 2 - 1
        with moa.applied(pipe.unet), moa.conditioned(index, moa.encode_subject(references)):
            out = pipe.unet(x, t, encoder_hidden_states=embeds, encoder_attention_mask=mask).sample
            router = moa.router_map((32, 32))
    assert_close(out, base, **FP32, what="MoA at init vs base")
    assert float(router.min()) == pytest.approx(float(torch.sigmoid(torch.tensor(2.0))), abs=1e-6)
    assert type(pipe.unet.attn_processors[next(iter(pipe.unet.attn_processors))]).__name__ != "MoAProcessor"


def test_the_mix_matches_diffusers_processor_on_each_branch():
    """One cross-attention layer: out = R0·AttnProcessor2_0(prior) + R1·AttnProcessor2_0(personalised copy), with the
    subject token replaced in the personalised context only."""
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    unet = _AsUNet(attn)
    moa = perturbed(MoA.create(unet, MoASettings(image_dim=8, mlp_hidden=16)))
    x, context = torch.randn(3, 5, 16), torch.randn(3, 4, 12)
    index, subject, t = torch.tensor([2, -1, 0]), torch.randn(3, 8), torch.tensor([10, 500, 900])
    with torch.no_grad():
        moa.install(unet)
        moa.state.timestep = t
        with moa.conditioned(index, subject):
            out = attn(x, encoder_hidden_states=context)
        moa.remove()
        branch = moa.branches[0]
        copy_attn = copy.deepcopy(attn)
        for name in ("to_q", "to_k", "to_v"):
            setattr(copy_attn, name, getattr(branch, name))
        copy_attn.to_out = branch.to_out
        replaced = context.clone()
        for row, k in enumerate(index.tolist()):
            if k >= 0:
                replaced[row, k] = context[row, k] + moa.subject_mlp.mlp(
                    torch.cat([subject[row], context[row, k], _features(t[row]), moa.subject_mlp.layer.weight[0]])
                )
        prior = AttnProcessor2_0()(attn, x, context)
        pers = AttnProcessor2_0()(copy_attn, x, replaced)
        weight = branch.router(x).softmax(-1)
        expected = weight[..., :1] * prior + weight[..., 1:] * pers
    assert_close(out, expected, **FP32, what="two-branch mix")
    assert (out - prior).abs().max() > 1e-2  # the personalised branch changed something


def test_gradients_reach_only_the_personalised_branches_router_and_subject_mlp(pipe):
    x, t, embeds, mask, index = unet_inputs(pipe, ["a sks shape on white", "an image of a sks thing"])
    moa = perturbed(MoA.create(pipe.unet, MoASettings()))
    references = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with moa.applied(pipe.unet), moa.conditioned(index, moa.encode_subject(references)):
        out = pipe.unet(x, t, encoder_hidden_states=embeds, encoder_attention_mask=mask).sample
        (out.pow(2).mean() + moa.router_map((32, 32)).mean()).backward()
    assert all(p.grad is None for p in pipe.unet.parameters())
    missing = [n for n, p in moa.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_moa_gradients_match_finite_differences():
    """float64 gradcheck of one MoA cross-attention layer w.r.t. its input, the subject embedding, a personalised
    weight and a router weight."""
    from torch.func import functional_call

    torch.manual_seed(0)
    unet = _AsUNet(Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4).double())
    moa = perturbed(MoA.create(unet, MoASettings(image_dim=4, mlp_hidden=8, router_hidden=4))).double()
    moa.install(unet, backend="sdpa")  # "reference" computes in float32 by design: too coarse for gradcheck
    moa.state.timestep = torch.tensor([100, 600])
    context = torch.randn(2, 3, 6, dtype=torch.float64)
    names = ("moa.branches.0.to_v.weight", "moa.branches.0.router.net.0.weight")

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet, self.moa = unet, moa

        def forward(self, x, subject):
            with self.moa.conditioned([1, -1], subject):
                return self.unet.attn2(x, encoder_hidden_states=context)

    layer = Layer()

    def run(x, subject, w_v, w_router):
        return functional_call(layer, dict(zip(names, (w_v, w_router), strict=True)), (x, subject))

    params = dict(layer.named_parameters())
    inputs = (
        torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 4, dtype=torch.float64, requires_grad=True),
        *(params[n].detach().clone().requires_grad_(True) for n in names),
    )
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6)
    moa.remove()


def test_strength_zero_is_the_base_exactly_and_strength_scales_the_router_odds(pipe):
    x, t, embeds, mask, index = unet_inputs(pipe, ["a sks shape on a navy background", "a sks shape"])
    moa = perturbed(MoA.create(pipe.unet, MoASettings()))
    subject = moa.encode_subject(torch.zeros(2, 3, 32, 32)).detach()
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=embeds, encoder_attention_mask=mask).sample
        with moa.applied(pipe.unet):
            maps = {}
            for s in (0.0, 1.0, 3.0):
                with moa.conditioned(index, subject, strength=s):
                    out = pipe.unet(x, t, encoder_hidden_states=embeds, encoder_attention_mask=mask).sample
                    maps[s] = (out, dict(moa.state.router))
    assert torch.equal(maps[0.0][0], base)
    assert not maps[0.0][1]  # the branch was skipped
    assert (maps[1.0][0] - base).abs().max() > 1e-3
    # at the first layer (same input for every strength) the odds are multiplied by s exactly
    first = moa.settings.layers[0]
    r1, r3 = maps[1.0][1][first].double(), maps[3.0][1][first].double()
    unsaturated = (r1 > 0.01) & (r1 < 0.99) & (r3 < 0.999)
    assert unsaturated.sum() > 10
    log_odds = lambda r: torch.log(r / (1 - r))[unsaturated]  # noqa: E731
    assert_close(log_odds(r3) - log_odds(r1), torch.full_like(log_odds(r1), np.log(3)), atol=1e-3, what="log odds")
    with (
        pytest.raises(ValueError, match=r"strength must be a number in 0\.\.10"),
        moa.conditioned(index, subject, strength=-1),
    ):
        pass


def test_classifier_free_guidance_rows_carry_no_subject():
    state = MoAState(token_index=torch.tensor([3, -1]), subject=torch.ones(2, 4))
    index, subject = state.rows(4)
    assert (
        index.tolist() == [-1, -1, 3, -1] and subject[:2].abs().sum() == 0 and torch.equal(subject[2:], state.subject)
    )
    assert state.rows(2)[0].tolist() == [3, -1]
    with pytest.raises(ValueError, match="holds 2 rows but the UNet was called with 3"):
        state.rows(3)


@pytest.mark.parametrize(
    ("prompt", "text", "word"),
    [
        ("a sks shape on a navy background", "a shape on a navy background", "shape"),
        ("sks thing", "thing", "thing"),
        ("a red circle", "a red circle", None),
        ("a picture of a sks object.", "a picture of a object.", "object"),
    ],
)
def test_split_prompt_drops_the_identifier_and_finds_the_class_word(pipe, prompt, text, word):
    split = split_prompt(prompt)
    assert split.text == text
    if word is None:
        assert split.start is None and subject_token_index(pipe.tokenizer, [split]) == [-1]
        return
    assert split.text[split.start :].startswith(word)
    (index,) = subject_token_index(pipe.tokenizer, [split])
    ids = pipe.tokenizer(split.text)["input_ids"]
    assert pipe.tokenizer.convert_ids_to_tokens(ids[index]) == word


def test_subject_index_skips_a_clip_style_begin_token():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "a": 2, "shape": 3, "on": 4, "navy": 5, "[UNK]": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=8, pad_token="</s>")
    assert subject_token_index(fast, [split_prompt("a sks shape on navy")]) == [2]


@pytest.mark.parametrize(
    ("prompt", "error"),
    [("a sks sks shape", "names the subject"), ("a shape sks", "must come before the class word")],
)
def test_bad_identifier_placement_is_refused(prompt, error):
    with pytest.raises(ValueError, match=error):
        split_prompt(prompt)


def test_a_subject_word_past_the_encoder_length_is_refused(pipe):
    long = SubjectPrompt("a " * 300 + "shape", 600)
    with pytest.raises(ValueError, match="past what the text encoder reads"):
        subject_token_index(pipe.tokenizer, [long])


def test_save_load_round_trip_and_refusals(pipe, tmp_path):
    moa = perturbed(MoA.create(pipe.unet, MoASettings(base="tiny")))
    path = moa.save(tmp_path / "moa.safetensors")
    again = MoA.load(tmp_path, pipe.unet)
    assert again.settings == moa.settings
    assert all(torch.equal(a, b) for a, b in zip(moa.state_dict().values(), again.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="made for another UNet"):
        MoA.load(path, load_pipeline("shapes", "image").unet)
    with pytest.raises(ValueError, match=r"has no moa\.safetensors"):
        MoA.load(tmp_path / "nowhere")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        MoA.load(tmp_path / "bad.safetensors")
    with torch.no_grad():
        moa.branches[0].to_q.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        moa.save(tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()


def test_generate_with_moa(pipe):
    moa = perturbed(MoA.create(pipe.unet, MoASettings()))
    prompts = ["a sks shape on a navy background", "a red circle"]
    reference = np.full((32, 32, 3), 128, np.uint8)
    kwargs = {"num_inference_steps": 3, "seeds": [5, 6], "guidance_scale": 2.0}
    plain = generate(pipe, ["a shape on a navy background", "a red circle"], **kwargs)
    off = generate(pipe, prompts, moa=moa, subject=reference, moa_strength=0.0, **kwargs)
    on = generate(pipe, prompts, moa=moa, subject=reference, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(plain.data, off.data, strict=True))
    assert not np.array_equal(plain.data[0], on.data[0])
    assert len(on.router_maps) == 2 and on.router_maps[0].shape == (32, 32)
    assert on.router_maps[0].min() >= 0 and on.router_maps[0].max() <= 1
    assert on.settings["moa_strength"] == 1.0 and plain.router_maps is None
    assert type(next(iter(pipe.unet.attn_processors.values()))).__name__ != "MoAProcessor"  # removed after
    with pytest.raises(ValueError, match="give a reference image"):
        generate(pipe, prompts, moa=moa, **kwargs)


def test_a_subject_file_with_transparency_reads_as_the_references_grey(pipe, tmp_path):
    from PIL import Image

    moa = perturbed(MoA.create(pipe.unet, MoASettings()))
    picture = np.zeros((32, 32, 4), np.uint8)
    picture[8:24, 8:24] = (230, 30, 30, 255)  # an opaque red square; the rest fully transparent black
    Image.fromarray(picture).save(tmp_path / "subject.png")
    on_grey = np.full((32, 32, 3), 128, np.uint8)
    on_grey[8:24, 8:24] = (230, 30, 30)
    kwargs = {"num_inference_steps": 2, "seeds": [3], "guidance_scale": 2.0, "moa": moa}
    from_file = generate(pipe, ["a sks shape"], subject=tmp_path / "subject.png", **kwargs)
    from_array = generate(pipe, ["a sks shape"], subject=on_grey, **kwargs)
    np.testing.assert_array_equal(from_file.data[0], from_array.data[0])
    Image.fromarray(picture[:20]).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"is 32x20 px but this model draws 32x32; pass a picture of that size"):
        generate(pipe, ["a sks shape"], subject=tmp_path / "small.png", **kwargs)


def test_overlay_tints_where_the_router_is_personalised():
    image = np.zeros((4, 4, 3), np.uint8)
    router = np.zeros((2, 2), np.float32)
    router[0, 0] = 1.0
    out = overlay(image, router)
    assert out[0, 0, 0] > 100 and out[0, 0, 1] == 0 and out[3, 3].sum() < out[0, 0].sum()
    np.testing.assert_array_equal(overlay(image, router * 0.1), out)  # scaled to the map's largest weight
    np.testing.assert_array_equal(overlay(image, np.zeros((2, 2), np.float32)), image)  # no branch, no tint


# ---- helpers ----------------------------------------------------------------------------------------------------
class _AsUNet(torch.nn.Module):
    """One Attention layer with the two UNet methods MoA uses (``attn_processors``, ``set_attn_processor``)."""

    def __init__(self, attn):
        super().__init__()
        self.attn2 = attn

    @property
    def attn_processors(self):
        return {"attn2.processor": self.attn2.processor}

    def set_attn_processor(self, processors):
        self.attn2.set_processor(processors["attn2.processor"])


def _features(t):
    from studio.attention.moa import timestep_features

    return timestep_features(t.view(1), 32)[0]
