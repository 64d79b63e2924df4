"""Folders diffusers itself can load: studio pipelines through their one-line pipeline.py, Stable Diffusion layouts
as StableDiffusionPipeline (also after a merge); foreign pipeline code and SDXL refused; dtype changes stay local."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline

from studio.merging import merge_pipelines
from studio.pipelines import StudioImagePipeline, load_pipeline

KWARGS = {"prompt": "a red circle", "num_inference_steps": 2, "guidance_scale": 2.0, "output_type": "np"}


def sample(pipe, seed=0):
    return pipe(generator=torch.Generator().manual_seed(seed), **KWARGS).images


def test_a_saved_studio_folder_loads_in_plain_diffusers_with_the_same_samples(tiny_shapes_folder):
    ours = load_pipeline(tiny_shapes_folder)
    theirs = DiffusionPipeline.from_pretrained(tiny_shapes_folder, trust_remote_code=True)
    assert type(theirs) is StudioImagePipeline
    np.testing.assert_array_equal(sample(ours), sample(theirs))
    index = json.loads((tiny_shapes_folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "StudioImagePipeline"]


def test_the_shipped_models_load_in_plain_diffusers():
    from studio.models.zoo import model_dir

    pipe = DiffusionPipeline.from_pretrained(model_dir("synth"), trust_remote_code=True)
    assert type(pipe).__name__ == "StudioMusicPipeline" and pipe.sample_rate == 16_000


def test_a_folder_with_pipeline_code_of_its_own_is_refused_and_never_run(tiny_shapes_folder, tmp_path):
    folder = tmp_path / "evil"
    shutil.copytree(tiny_shapes_folder, folder)
    marker = tmp_path / "ran"
    (folder / "pipeline.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(ValueError, match=r"carries pipeline code of its own .* mixstudio does not run it"):
        load_pipeline(folder)
    assert not marker.exists()


def test_a_stable_diffusion_folder_stays_a_stable_diffusion_pipeline_after_a_merge(tiny_sd_folder, tmp_path):
    merged = tmp_path / "merged"
    merge_pipelines([tiny_sd_folder, tiny_sd_folder], [0.5, 0.5], merged)
    index = json.loads((merged / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and not (merged / "pipeline.py").exists()
    theirs = StableDiffusionPipeline.from_pretrained(merged, safety_checker=None)  # plain diffusers, no studio code
    ours = load_pipeline(merged)
    theirs.set_progress_bar_config(disable=True)
    a = theirs(generator=torch.Generator().manual_seed(0), height=16, width=16, **KWARGS).images
    b = ours(generator=torch.Generator().manual_seed(0), height=16, width=16, **KWARGS).images
    assert np.abs(a - b).max() < 1e-5


def test_sdxl_folders_are_refused_at_load(tiny_sd_folder, tmp_path):
    folder = tmp_path / "sdxl"
    shutil.copytree(tiny_sd_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    second = ["transformers", "CLIPTextModelWithProjection"]
    index.update(_class_name="StableDiffusionXLPipeline", text_encoder_2=second)
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"is an SDXL pipeline .* refused rather than sampled wrongly"):
        load_pipeline(folder)


def test_a_dtype_change_touches_only_its_own_pipeline(tiny_shapes_folder):
    one, other = load_pipeline(tiny_shapes_folder), load_pipeline(tiny_shapes_folder)
    before = sample(other)
    one.to(torch.bfloat16)
    assert one.text_encoder is not other.text_encoder and other.text_encoder.dtype == torch.float32
    np.testing.assert_array_equal(sample(other), before)
