import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from studio.models.unet import with_guidance_input
from studio.pipelines import StudioImagePipeline, load_pipeline, make_scheduler


def test_stable_diffusion_folder_loads_and_matches_diffusers(tiny_sd_folder):
    ours = load_pipeline(tiny_sd_folder, scheduler="ddim")
    assert ours.vae is not None and type(ours.text_encoder).__name__ == "CLIPTextModel"
    reference = StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    reference.set_progress_bar_config(disable=True)
    kwargs = {
        "prompt": ["a red circle", "a blue star"],
        "negative_prompt": ["blurry", "dark"],
        "num_inference_steps": 4,
        "guidance_scale": 3.0,
        "output_type": "np",
        "height": 16,
        "width": 16,
    }
    got = ours(generator=torch.Generator().manual_seed(0), **kwargs).images
    want = reference(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert got.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_guidance_rescale_matches_diffusers(tiny_sd_folder):
    ours = load_pipeline(tiny_sd_folder, scheduler="ddim")
    reference = StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    reference.set_progress_bar_config(disable=True)
    kwargs = {"prompt": "a red circle", "num_inference_steps": 4, "guidance_scale": 6.0, "output_type": "np"}
    kwargs |= {"height": 16, "width": 16}
    plain = ours(generator=torch.Generator().manual_seed(0), **kwargs).images
    got = ours(generator=torch.Generator().manual_seed(0), guidance_rescale=0.7, **kwargs).images
    want = reference(generator=torch.Generator().manual_seed(0), guidance_rescale=0.7, **kwargs).images
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - plain).max() > 1e-3  # the rescale changed the samples


def test_guidance_interval_runs_the_unconditional_branch_only_inside_it(tiny_embedded_pipeline):
    pipe = tiny_embedded_pipeline
    latents = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    settings = {"num_images_per_prompt": 2, "num_inference_steps": 4, "latents": latents, "output_type": "pt"}
    pipe.scheduler.set_timesteps(4)
    assert pipe.scheduler.timesteps.tolist() == [750, 500, 250, 0]
    batch_sizes = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: batch_sizes.append(args[0].shape[0]))
    try:
        interval = pipe("a red circle", guidance_scale=4.0, guidance_interval=(0.2, 0.6), **settings).images
        assert batch_sizes == [2, 4, 4, 2]  # guided at t = 500 and 250 only
        batch_sizes.clear()
        everywhere = pipe("a red circle", guidance_scale=4.0, guidance_interval=(0.0, 1.0), **settings).images
        assert batch_sizes == [4, 4, 4, 4]
    finally:
        hook.remove()
    torch.testing.assert_close(everywhere, pipe("a red circle", guidance_scale=4.0, **settings).images)
    nowhere = pipe("a red circle", guidance_scale=4.0, guidance_interval=(0.9, 1.0), **settings).images
    torch.testing.assert_close(nowhere, pipe("a red circle", guidance_scale=1.0, **settings).images)
    assert (interval - everywhere).abs().max() > 1e-4 and (interval - nowhere).abs().max() > 1e-4


def test_embedded_pipeline_round_trips_without_copying_the_text_encoder(tiny_embedded_pipeline, tmp_path):
    pipe = tiny_embedded_pipeline
    pipe.save_pretrained(tmp_path / "m")
    saved = {p.name for p in (tmp_path / "m").iterdir()}
    assert saved == {"model_index.json", "unet", "scheduler", "pipeline.py"}  # the 90 MB MiniLM stays in its package
    loaded = StudioImagePipeline.from_pretrained(tmp_path / "m")
    loaded.set_progress_bar_config(disable=True)
    kwargs = {"prompt": "a red circle", "num_inference_steps": 3, "guidance_scale": 2.0, "output_type": "np"}
    a = pipe(generator=torch.Generator().manual_seed(1), **kwargs).images
    b = loaded(generator=torch.Generator().manual_seed(1), **kwargs).images
    assert a.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(a, b)
    assert str(tmp_path) in loaded.unet.config._name_or_path  # diffusers records where it loaded from ...
    loaded.save_pretrained(tmp_path / "again")  # ... and a re-save names no path of this machine
    assert not any("_name_or_path" in p.read_text() for p in (tmp_path / "again").glob("**/*.json"))


def test_latents_callback_and_guidance_cost(tiny_embedded_pipeline):
    pipe = tiny_embedded_pipeline
    batch_sizes, steps_seen = [], []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, args, kw: batch_sizes.append(args[0].shape[0]), with_kwargs=True
    )

    def callback(p, i, t, tensors):
        steps_seen.append(i)
        return {"latents": tensors["latents"]}

    latents = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    unguided = {
        "num_images_per_prompt": 2,
        "num_inference_steps": 3,
        "guidance_scale": 1.0,
        "latents": latents,
        "output_type": "pt",
    }
    try:
        out1 = pipe("a red circle", callback_on_step_end=callback, **unguided).images
        assert batch_sizes == [2, 2, 2] and steps_seen == [0, 1, 2]  # no CFG: one pass per step
        batch_sizes.clear()
        pipe("a red circle", num_images_per_prompt=2, num_inference_steps=3, guidance_scale=4.0, latents=latents)
        assert batch_sizes == [4, 4, 4]  # CFG doubles the batch
    finally:
        hook.remove()
    out2 = pipe("a red circle", **unguided).images
    torch.testing.assert_close(out1, out2)
    assert out1.min() >= 0 and out1.max() <= 1


def test_a_guidance_conditioned_unet_reads_the_scale_in_one_pass_per_step(tiny_embedded_pipeline):
    teacher = tiny_embedded_pipeline
    student = StudioImagePipeline(
        unet=with_guidance_input(teacher.unet),
        scheduler=teacher.scheduler,
        text_encoder=teacher.text_encoder,
        tokenizer=teacher.tokenizer,
    )
    latents = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    settings = {"num_images_per_prompt": 2, "num_inference_steps": 3, "latents": latents, "output_type": "pt"}

    def sample(pipe, w):
        return pipe("a red circle", guidance_scale=w, **settings).images

    batch_sizes = []
    hook = student.unet.register_forward_pre_hook(lambda m, args: batch_sizes.append(args[0].shape[0]))
    try:
        at_init = sample(student, 4.0)
    finally:
        hook.remove()
    assert student.guidance_conditioned and batch_sizes == [2, 2, 2]  # no CFG pass at any scale
    torch.testing.assert_close(at_init, sample(teacher, 1.0))  # zero-initialised scale input: the teacher, unguided
    with torch.no_grad():
        student.unet.time_embedding.cond_proj.weight.normal_(0, 0.5)
    assert (sample(student, 2.0) - sample(student, 4.0)).abs().max() > 1e-3
    # outside the guidance interval the student reads w = 1
    nowhere = student("a red circle", guidance_scale=4.0, guidance_interval=(0.9, 1.0), **settings).images
    torch.testing.assert_close(nowhere, sample(student, 1.0))
    with pytest.raises(ValueError, match="guidance_rescale needs the conditional prediction"):
        student("a red circle", guidance_scale=4.0, guidance_rescale=0.7, **settings)
    with pytest.raises(ValueError, match="already reads a guidance embedding"):
        with_guidance_input(student.unet)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "prompt must be a non-empty string"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps must be an integer"),
        ({"prompt": "x", "num_inference_steps": 10**6}, "num_inference_steps must be an integer"),
        ({"prompt": "x", "guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
        ({"prompt": "x", "guidance_rescale": 2.0}, r"guidance_rescale must be a number in \[0, 1\]"),
        ({"prompt": "x", "guidance_interval": (0.5, 0.1)}, "guidance_interval must satisfy"),
        ({"prompt": "x", "height": 15}, "height must be a positive multiple of 2"),
        ({"prompt": "x", "num_images_per_prompt": 1000}, "must be between 1 and 64"),
        ({"prompt": "x", "output_type": "jpeg"}, "output_type must be"),
        ({"prompt": ["x", "y"], "negative_prompt": ["z"]}, "negative_prompt has 1 entries for 2 prompts"),
        ({"prompt": "x", "latents": torch.zeros(1, 3, 8, 8)}, "latents must have shape"),
    ],
)
def test_bad_arguments_raise_clear_errors(tiny_embedded_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_embedded_pipeline(num_inference_steps=kwargs.pop("num_inference_steps", 2), **kwargs)


def test_load_pipeline_errors_name_the_model(tmp_path):
    with pytest.raises(ValueError, match="cannot load image model"):
        load_pipeline(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="unknown scheduler 'plms'"):
        make_scheduler("plms", {})


def test_samplers_for_cosine_pixel_models_are_guarded(tiny_embedded_pipeline):
    config = tiny_embedded_pipeline.scheduler.config
    dpm = make_scheduler("dpm++", config)
    assert dpm.config.thresholding and dpm.config.lambda_min_clipped == -5.1
    with pytest.raises(ValueError, match="'euler' diverges"):
        make_scheduler("euler", config)


def test_encode_maps_images_into_the_unet_space(tiny_sd_folder, tiny_embedded_pipeline):
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(tiny_embedded_pipeline.encode(images), images)  # pixel model: the identity
    sd = load_pipeline(str(tiny_sd_folder))
    latents = sd.encode(images)
    f = sd.vae_scale_factor
    assert latents.shape == (2, sd.unet.config.in_channels, 16 // f, 16 // f)
    expected = sd.vae.encode(images).latent_dist.mean * sd.vae.config.scaling_factor
    torch.testing.assert_close(latents, expected)
