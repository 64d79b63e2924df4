"""The app's service object on tiny random models: generation, merging, uploads, evaluation, model listing."""

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

import studio as studio_api
from studio.adapters import DEFAULT_TARGETS, LoRAConfig, add_adapter, save_adapter
from studio.app.inputs import parse_scales
from studio.app.service import Studio
from studio.io import read_image, read_wav
from studio.pipelines import load_pipeline
from studio.pipelines.image import to_uint8


@pytest.fixture
def studio(workdir, no_embedded):
    service = Studio(workdir)
    yield service
    service.close()


def files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_list_models_shows_present_embedded_models_and_run_folders(studio, model_store, no_embedded):
    names = {m.name: m.modality for m in studio.list_models()}
    assert names == {"runs/a": "image", "runs/b": "image", "runs/wide": "image", "runs/music": "audio"}
    shutil.copytree(model_store / "a", no_embedded / "models" / "shapes")  # an embedded model appears
    (studio.runs_dir / "broken").mkdir()  # a folder without model_index.json is not a model
    assert [m.name for m in studio.list_models("image")] == ["shapes", "runs/a", "runs/b", "runs/wide"]
    assert studio.resolve("shapes").kind == "embedded"
    with pytest.raises(ValueError, match=r"unknown model '/etc'; pick one of \['shapes', 'runs/a'"):
        studio.resolve("/etc")  # paths from the browser never load
    with pytest.raises(ValueError, match="an audio model; pick an image model"):
        studio.resolve("runs/music", "image")


def test_local_model_folders_given_at_launch_are_listed_and_load_with_their_adapters(
    tmp_path, model_store, no_embedded
):
    local = tmp_path / "mine" / "shapes-mix"
    shutil.copytree(model_store / "a", local)
    service = Studio(tmp_path / "app", models=[local, model_store / "music"])
    try:
        listed = {m.name: (m.modality, m.kind) for m in service.list_models()}
        assert listed == {str(local): ("image", "local"), str(model_store / "music"): ("audio", "local")}
        direct = load_pipeline(local)(
            "a red circle",
            num_inference_steps=2,
            guidance_scale=1.0,
            output_type="np",
            generator=torch.Generator().manual_seed(1),
        ).images
        result = service.generate_image(str(local), "a red circle", steps=2, guidance=1.0, seed=1)
        assert np.abs(read_image(result.files[0]).astype(int) - to_uint8(direct)[0].astype(int)).max() <= 1
        # an adapter under runs/ trained on the local folder applies to it
        pipe = load_pipeline(local)
        add_adapter(pipe.unet, "x", LoRAConfig(rank=2), DEFAULT_TARGETS)
        save_adapter(pipe.unet, "x", service.runs_dir / "ft" / "adapter.safetensors", base_model_id=str(local))
        assert [(a.name, a.base) for a in service.list_adapters()] == [("runs/ft/adapter.safetensors", str(local))]
    finally:
        service.close()
    with pytest.raises(ValueError, match=r"model folder '.*nothing' has no model_index.json; pass a saved pipeline"):
        Studio(tmp_path / "app2", models=[tmp_path / "nothing"])


def test_generate_image_writes_the_model_size_reproducibly_with_a_manifest(studio):
    result = studio.generate_image("runs/a", "a red circle", steps=2, guidance=3.0, seed=5, count=3)
    assert result.folder.parent == studio.workdir / "outputs" / "image"
    assert [p.name for p in result.files] == ["0000.png", "0001.png", "0002.png"]
    images = [read_image(p) for p in result.files]
    assert all(img.shape == (32, 32, 3) for img in images)
    manifest = json.loads(result.manifest.read_text())
    assert [(i["prompt"], i["seed"]) for i in manifest["items"]] == [("a red circle", 5 + k) for k in range(3)]
    assert manifest["world"] == "shapes" and manifest["meta"]["guidance"] == 3.0
    # sample k is what the pipeline makes with seed + k
    pipe = load_pipeline(studio.runs_dir / "a")
    direct = pipe("a red circle", num_inference_steps=2, guidance_scale=3.0, output_type="np",
                  generator=torch.Generator().manual_seed(6)).images  # fmt: skip
    # batch 3 vs batch 1 changes float summation order: at most one level of uint8 rounding
    assert np.abs(images[1].astype(int) - to_uint8(direct)[0].astype(int)).max() <= 1
    assert not np.array_equal(images[0], images[1])
    # guidance rescale and interval reach the pipeline and the manifest
    refined = studio.generate_image(
        "runs/a", "a red circle", steps=2, guidance=3.0, seed=6, guidance_rescale=0.5, guidance_interval=(0.0, 0.6)
    )
    meta = json.loads(refined.manifest.read_text())["meta"]
    assert meta["guidance_rescale"] == 0.5 and meta["guidance_interval"] == [0.0, 0.6]
    direct = pipe("a red circle", num_inference_steps=2, guidance_scale=3.0, output_type="np", guidance_rescale=0.5,
                  guidance_interval=(0.0, 0.6), generator=torch.Generator().manual_seed(6)).images  # fmt: skip
    assert np.array_equal(read_image(refined.files[0]), to_uint8(direct)[0])
    assert not np.array_equal(read_image(refined.files[0]), images[1])


def test_generate_music_returns_clips_and_a_spectrogram_each(studio):
    seen = []
    result = studio.generate_music(
        "runs/music", "a fast tune", steps=2, count=2, progress=lambda f, desc: seen.append(f)
    )
    assert result.sample_rate == 16000 and len(result.files) == 2
    assert read_wav(result.files[0]).shape == (32 * 256,)
    assert all(s.ndim == 3 and s.shape[2] == 3 and s.dtype == np.uint8 for s in result.spectrograms)
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    with pytest.raises(ValueError, match="positive multiple"):
        studio.generate_music("runs/music", "a fast tune", steps=1, length_s=0.3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 501}, "limit is 500"),
        ({"steps": 0}, "steps must be a whole number from 1 to 200"),
        ({"steps": 201}, "steps must be"),
        ({"count": 0}, "count must be"),
        ({"count": 17}, "count must be a whole number from 1 to 16"),
        ({"guidance": -1.0}, "guidance must be a number from 0 to 30"),
        ({"guidance": float("nan")}, "guidance must be"),
        ({"seed": -1}, "seed must be"),
        ({"guidance_rescale": 2.0}, "guidance-rescale must be a finite number from 0 to 1"),
        ({"guidance_interval": (0.7, 0.2)}, "guidance-interval must satisfy"),
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"model": ""}, "no model picked"),
        ({"model": "runs/music"}, "pick an image model"),
        ({"scheduler": "magic"}, "scheduler 'magic' is unknown"),
    ],
)
def test_generate_image_refuses_bad_input_and_writes_nothing(studio, change, message):
    kwargs = {"model": "runs/a", "prompt": "a red circle", "steps": 1, **change}
    with pytest.raises(ValueError, match=message):
        studio.generate_image(kwargs.pop("model"), kwargs.pop("prompt"), **kwargs)
    assert files_under(studio.workdir / "outputs") == []


def test_pipelines_are_cached_lru_and_a_resaved_folder_reloads(workdir, model_store, no_embedded, monkeypatch):
    loads = []
    real = studio_api.load_pipeline  # the app loads through the public API
    monkeypatch.setattr(studio_api, "load_pipeline", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    service = Studio(workdir, cache_size=2)
    first = service.models.pipeline("runs/a")
    assert service.models.pipeline("runs/a") is first and len(loads) == 1
    assert service.models.pipeline("runs/a", "dpm++") is not first  # the sampler is part of the key
    service.models.pipeline("runs/b")  # evicts runs/a with its saved sampler
    service.models.pipeline("runs/a")
    assert len(loads) == 4
    tiny = load_pipeline(model_store / "b")
    tiny.save_pretrained(service.runs_dir / "a")  # re-saved: new weights must be served
    assert service.models.pipeline("runs/a") is not first and len(loads) == 5


def test_merge_preview_remerges_in_memory_and_its_endpoints_are_the_sources(studio, monkeypatch):
    settings = {"prompt": "a red circle", "seed": 3, "steps": 2}
    only_a = studio.merge_preview(["runs/a", "runs/b"], [1.0, 0.0], **settings)
    alone = studio.generate_image("runs/a", "a red circle", steps=2, seed=3)
    np.testing.assert_array_equal(only_a.image, read_image(alone.files[0]))
    loads = []
    monkeypatch.setattr(studio_api, "load_pipeline", lambda *a, **k: loads.append(a) or pytest.fail("reloaded"))
    mixed = studio.merge_preview(["runs/a", "runs/b"], [0.6, 0.2], **settings)
    assert mixed.weights == pytest.approx([0.75, 0.25]) and mixed.audio is None
    assert np.abs(mixed.image.astype(int) - only_a.image).max() > 0  # the weight changed the output
    raw = studio.merge_preview(["runs/a", "runs/b"], [0.6, 0.2], normalize=False, **settings)
    assert raw.weights == pytest.approx([0.6, 0.2]) and loads == []


def test_quality_diversity_slider_merges_the_shipped_students_and_samples_unguided(studio, model_store, no_embedded):
    assert studio.quality_diversity_pairs() == {}  # one student alone makes no slider
    shutil.copytree(model_store / "a", no_embedded / "models" / "shapes-quality")
    assert studio.quality_diversity_pairs() == {}
    shutil.copytree(model_store / "b", no_embedded / "models" / "shapes-diversity")
    assert studio.quality_diversity_pairs() == {"shapes": ("shapes-quality", "shapes-diversity")}
    settings = {"prompt": "a red circle", "seed": 3, "steps": 2}
    ends = [studio.quality_diversity_preview("shapes", lam, **settings) for lam in (0.0, 1.0)]
    for end, source in zip(ends, ("runs/a", "runs/b"), strict=True):
        alone = studio.generate_image(source, "a red circle", steps=2, seed=3, guidance=1.0)
        np.testing.assert_array_equal(end.image, read_image(alone.files[0]))
    middle = studio.quality_diversity_preview("shapes", 0.3, **settings)
    assert middle.weights == pytest.approx([0.7, 0.3]) and middle.models == ["shapes-quality", "shapes-diversity"]
    assert min(np.abs(middle.image.astype(int) - end.image).max() for end in ends) > 0
    with pytest.raises(ValueError, match=r"between 0 and 1, got 1\.5"):
        studio.quality_diversity_preview("shapes", 1.5, **settings)
    with pytest.raises(
        ValueError, match=r"world 'synth' ships no quality/diversity students; pick one of \['shapes'\]"
    ):
        studio.quality_diversity_preview("synth", 0.5, **settings)


def test_merge_preview_of_music_gives_a_clip_and_its_spectrogram(studio, model_store):
    shutil.copytree(model_store / "music", studio.runs_dir / "music2")
    preview = studio.merge_preview(["runs/music", "runs/music2"], [0.5, 0.5], prompt="a tune", steps=1)
    assert preview.audio.shape == (32 * 256,) and preview.sample_rate == 16000 and preview.image.ndim == 3


@pytest.mark.parametrize(
    ("models", "weights", "message"),
    [
        (["runs/a"], [1.0], "pick 2 to 4 models"),
        (["runs/a", "runs/a"], [0.5, 0.5], "'runs/a' is picked twice"),
        (["runs/a", "runs/wide"], [0.5, 0.5], "cannot merge 'runs/a' and 'runs/wide': their UNet configs differ"),
        (["runs/a", "runs/music"], [0.5, 0.5], r"cannot merge 'runs/a' \(image\) with 'runs/music' \(audio\)"),
        (["runs/a", "runs/b"], [0.0, 0.0], "sum to 0"),
        (["runs/a", "runs/b"], [0.5], "one finite weight per model"),
        (["runs/a", "runs/b"], [0.5, float("inf")], "one finite weight per model"),
    ],
)
def test_merge_preview_refuses(studio, models, weights, message):
    with pytest.raises(ValueError, match=message):
        studio.merge_preview(models, weights, prompt="a red circle", steps=1)


def test_save_merge_writes_a_listed_pipeline_that_reproduces_the_preview(studio):
    preview = studio.merge_preview(["runs/a", "runs/b"], [0.3, 0.7], prompt="a red circle", steps=2, seed=1)
    info = studio.save_merge(["runs/a", "runs/b"], [0.3, 0.7], "mix")
    assert info.name == "runs/mix" and info.source == str(studio.runs_dir / "mix")
    again = studio.generate_image("runs/mix", "a red circle", steps=2, seed=1)
    np.testing.assert_array_equal(read_image(again.files[0]), preview.image)
    assert json.loads((studio.runs_dir / "mix" / "merge.json").read_text())["sources"] == ["runs/a", "runs/b"]
    with pytest.raises(ValueError, match="runs/mix already exists"):
        studio.save_merge(["runs/a", "runs/b"], [0.3, 0.7], "mix")
    for bad in ("../escape", "", ".hidden", "a/b", "x" * 65):
        with pytest.raises(ValueError, match="is not allowed"):
            studio.save_merge(["runs/a", "runs/b"], [0.3, 0.7], bad)
    assert sorted(p.name for p in studio.runs_dir.iterdir()) == ["a", "b", "mix", "music", "wide"]


def test_evaluate_runs_a_guidance_sweep_inside_the_workdir(studio):
    result = studio.evaluate("runs/a", "3", per_prompt=2, steps=1)  # one scale: the sweep's own tests do more
    assert result.folder.parent.parent == studio.workdir / "evals"
    assert [row["guidance"] for row in result.rows()] == [3.0]
    assert (result.folder / "guidance-3" / "eval.json").is_file()
    assert all(0 <= row["adherence"] <= 1 for row in result.rows())
    assert read_image(result.plot).shape[0] > 200
    assert result.report.model == "runs/a" and "| 3 |" in result.report.table()


@pytest.mark.parametrize(
    ("scales", "kwargs", "message"),
    [
        ("", {}, "no guidance scales"),
        ("1, two", {}, "'two' is not a number"),
        ("1, -2", {}, "finite number >= 0"),
        ("1, 40", {}, "from 0 to 30"),
        ("1 2 3 4 5 6 7 8 9", {}, "1 to 8 guidance scales"),
        ("1, 1", {}, "distinct"),
        ("1, 2", {"per_prompt": 1}, "samples per prompt must be"),
    ],
)
def test_evaluate_refuses_bad_settings_before_sampling(studio, scales, kwargs, message):
    with pytest.raises(ValueError, match=message):
        studio.evaluate("runs/a", scales, steps=1, **kwargs)
    assert files_under(studio.workdir / "evals") == []


def test_parse_scales_accepts_commas_and_spaces():
    assert parse_scales(" 1, 2.5  4 ") == [1.0, 2.5, 4.0]


def zip_folder(folder, archive, prefix="model/", extra=None):
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return archive


def test_import_model_unpacks_a_checked_zip_into_runs(studio, model_store, tmp_path):
    archive = zip_folder(model_store / "a", tmp_path / "a.zip")
    info = studio.import_model(archive, "uploaded")
    assert info.name == "runs/uploaded" and info.modality == "image"
    assert (studio.runs_dir / "uploaded" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    np.testing.assert_array_equal(
        read_image(studio.generate_image("runs/uploaded", "x", steps=1).files[0]),
        read_image(studio.generate_image("runs/a", "x", steps=1).files[0]),
    )


@pytest.mark.parametrize(
    ("extra", "limit", "message"),
    [
        ({}, 1000, "the limit is 0 MB"),
        ({"../evil.json": "{}"}, None, "points outside the folder"),
        ({"model/unet/weights.bin": "pickle"}, None, "'model/unet/weights.bin' is not allowed"),
        ({"other/model_index.json": "{}"}, None, "one pipeline folder"),
        ({"README.md": "hi"}, None, "files outside the pipeline folder"),
    ],
)
def test_import_model_refuses_unsafe_archives_and_leaves_nothing(studio, model_store, tmp_path, extra, limit, message):
    if limit is not None:
        studio.max_upload_bytes = limit
    archive = zip_folder(model_store / "a", tmp_path / "a.zip", extra=extra)
    with pytest.raises(ValueError, match=message):
        studio.import_model(archive, "uploaded")
    assert sorted(p.name for p in studio.runs_dir.iterdir()) == ["a", "b", "music", "wide"]


def test_import_model_refuses_foreign_libraries_and_non_zips(studio, model_store, tmp_path):
    folder = tmp_path / "evil"
    shutil.copytree(model_store / "a", folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "unet": ["os", "system"]}))
    with pytest.raises(ValueError, match="component 'unet' comes from 'os'"):
        studio.import_model(zip_folder(folder, tmp_path / "evil.zip"), "evil")
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(ValueError, match="not a zip archive"):
        studio.import_model(tmp_path / "fake.zip", "fake")
    assert not (studio.runs_dir / "evil").exists() and not (studio.runs_dir / "fake").exists()


def test_warm_up_samples_the_model_once_and_writes_nothing(workdir, model_store, no_embedded, monkeypatch):
    compiled = []
    monkeypatch.setattr(studio_api, "compile_pipeline", lambda pipe: compiled.append(pipe) or pipe)
    service = Studio(workdir, compile=True)
    assert service.warm_up("runs/a") > 0 and len(compiled) == 1
    assert service.models.pipeline("runs/a") is compiled[0]  # the warmed, compiled pipeline serves the users
    assert files_under(workdir / "outputs") == []


def test_the_attention_picker_switches_loaded_and_later_models(studio):
    from studio.attention import get_backend

    loaded = studio.models.pipeline("runs/a")
    assert get_backend(loaded) is None  # the model's own processors until a backend is picked
    summary = studio.set_attention("reference")
    assert summary.startswith("attention backend: reference (") and get_backend(loaded) == "reference"
    assert get_backend(studio.models.pipeline("runs/b")) == "reference"  # loaded after the switch
    assert "falls back to sdpa" in studio.set_attention("triton")  # no GPU, no interpreter here
    with pytest.raises(ValueError, match=r"attention backend 'magic' is unknown; pick one of \['reference'"):
        studio.set_attention("magic")
    images = [studio.generate_image("runs/a", "a red circle", steps=2, seed=1).files[0] for _ in range(2)]
    studio.set_attention("sdpa")
    plain = studio.generate_image("runs/a", "a red circle", steps=2, seed=1).files[0]
    assert np.abs(read_image(images[0]).astype(int) - read_image(plain).astype(int)).max() <= 1
