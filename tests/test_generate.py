"""``mixstudio generate`` end to end on a tiny randomly initialised model saved to disk."""

import json

import pytest

from studio.cli import main
from studio.manifest import read_manifest


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_embedded_pipeline, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_embedded_pipeline.save_pretrained(folder)
    return folder


def test_generate_writes_images_and_a_manifest_eval_reads(tmp_path, capsys, tiny_model_dir):
    args = [
        "--quiet",
        "generate",
        "image",
        "a red circle",
        "-n",
        "3",
        "--steps",
        "2",
        "--guidance",
        "3",
        "--seed",
        "5",
    ]
    args += [
        "--scheduler",
        "dpm++",
        "--world",
        "shapes",
        "--negative-prompt",
        "blurry",
        "--model",
        str(tiny_model_dir),
    ]
    out = tmp_path / "gen"
    assert main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["seed"] for i in manifest["items"]] == [5, 6, 7]
    assert manifest["meta"]["guidance"] == 3.0 and manifest["meta"]["scheduler"] == "dpm++"
    assert manifest["meta"]["guidance_rescale"] == 0.0 and manifest["meta"]["guidance_interval"] == [0.0, 1.0]
    files = ["0000.png", "0001.png", "0002.png", "grid.png", "manifest.json"]
    assert sorted(p.name for p in out.iterdir()) == [".mixstudio", *files]

    refined = tmp_path / "refined"
    extra = ["--guidance-rescale", "0.7", "--guidance-interval", "0", "0.5"]
    assert main([*args, *extra, "--out", str(refined)]) == 0, capsys.readouterr().err
    meta = json.loads((refined / "manifest.json").read_text())["meta"]
    assert meta["guidance_rescale"] == 0.7 and meta["guidance_interval"] == [0.0, 0.5]
    assert (out / "0000.png").read_bytes() != (refined / "0000.png").read_bytes()

    again = tmp_path / "again"
    assert main([*args, "--out", str(again)]) == 0
    assert (out / "0002.png").read_bytes() == (again / "0002.png").read_bytes()  # deterministic by seed

    manifest = read_manifest(out)  # what `mixstudio eval` reads
    assert manifest.world == "shapes" and [i.prompt for i in manifest.items] == ["a red circle"] * 3


def test_generate_over_the_eval_prompt_set(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "set"
    assert (
        main(
            [
                "--quiet",
                "generate",
                "image",
                "--prompt-set",
                "eval",
                "-n",
                "1",
                "--steps",
                "1",
                "--model",
                str(tiny_model_dir),
                "--world",
                "shapes",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["items"]) == 48


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "image", ""], "prompt is empty"),
        (["generate", "image", "a red circle", "--steps", "0"], "--steps must be a whole number from 1 to 1000"),
        (["generate", "image", "a red circle", "--steps", "100000"], "--steps must be a whole number from 1 to 1000"),
        (["generate", "image", "a red circle", "--guidance", "nan"], "--guidance must be a finite number"),
        (
            ["generate", "image", "a red circle", "--guidance-rescale", "1.5"],
            "--guidance-rescale must be a finite number from 0 to 1",
        ),
        (["generate", "image", "a red circle", "--guidance-interval", "0.6", "0.2"], "--guidance-interval must"),
        (["generate", "image", "a red circle", "-n", "1000"], "allowed 1 to 256"),
        (["generate", "image", "a red circle", "--scheduler", "plms"], "--scheduler 'plms' is unknown"),
        (["generate", "image", "a red circle", "--model", "/no/such/model"], "cannot load image model"),
        (["generate", "image", "a red circle", "--prompt-set", "eval"], "not both"),
    ],
)
def test_bad_generate_arguments(tmp_path, capsys, args, message):
    out = tmp_path / "o"
    assert main(["--quiet", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_generate_refuses_a_file_as_output(tmp_path, capsys, tiny_model_dir):
    target = tmp_path / "file"
    target.write_text("keep")
    assert (
        main(["--quiet", "generate", "image", "a red circle", "--model", str(tiny_model_dir), "--out", str(target)])
        == 2
    )
    assert "is a file" in capsys.readouterr().err and target.read_text() == "keep"


@pytest.mark.parametrize(("modality", "expected"), [("image", 2.0), ("audio", 4.0)])
def test_the_default_guidance_is_the_modalitys_own_and_an_explicit_one_is_kept(
    modality, expected, tiny_embedded_pipeline, make_tiny_music
):
    from studio import generate

    pipe = tiny_embedded_pipeline if modality == "image" else make_tiny_music(0)
    assert generate(pipe, "a tune", num_inference_steps=1).settings["guidance"] == expected
    assert generate(pipe, "a tune", num_inference_steps=1, guidance_scale=1.5).settings["guidance"] == 1.5


def test_generate_with_an_attention_backend_records_it_and_matches_the_default(tmp_path, capsys, tiny_model_dir):
    base = ["--quiet", "generate", "image", "a red circle", "--steps", "2", "--model", str(tiny_model_dir)]
    assert main([*base, "--out", str(tmp_path / "sdpa")]) == 0
    assert main([*base, "--attention", "reference", "--out", str(tmp_path / "ref")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "ref" / "manifest.json").read_text())["meta"]["attention"] == "reference"
    from studio.io import read_image

    diff = read_image(tmp_path / "sdpa" / "0000.png").astype(int) - read_image(tmp_path / "ref" / "0000.png")
    assert abs(diff).max() <= 1
    assert main([*base, "--attention", "flash", "--out", str(tmp_path / "bad")]) == 2
    assert "--attention 'flash' is unknown; use one of ['reference', 'sdpa', 'triton', 'xformers']" in (
        capsys.readouterr().err
    )


def test_non_finite_samples_are_an_error_never_a_file(tmp_path, tiny_embedded_pipeline):
    import copy

    import torch

    from studio import generate

    broken = copy.deepcopy(tiny_embedded_pipeline)
    with torch.no_grad():
        broken.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"sampling 'a red circle' \(seed 7\) is not finite \(NaN or inf\); lower"):
        generate(broken, "a red circle", num_inference_steps=1, seed=7)
