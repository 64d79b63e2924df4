import numpy as np
import pytest
import torch

from studio.pipelines import StudioMusicPipeline


@pytest.fixture(scope="module")
def tiny_music_pipeline(make_tiny_music):
    pipe = make_tiny_music(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_music_pipeline_returns_waveforms_with_their_rate_and_round_trips(tiny_music_pipeline, tmp_path):
    pipe = tiny_music_pipeline
    length = 32 * 256 / 16000  # the training length: 32 frames
    out = pipe(
        ["a fast minor tune", "a slow major tune"],
        num_inference_steps=2,
        guidance_scale=3.0,
        num_waveforms_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.sample_rate == 16000 and out.audios.shape == (4, 32 * 256) and out.audios.dtype == np.float32
    assert np.abs(out.audios).max() <= 1.0 and out.mels.shape == (4, 1, 16, 32)
    assert pipe.default_length_s == pytest.approx(length)

    longer = pipe("a fast minor tune", audio_length_in_s=2 * length, num_inference_steps=1, guidance_scale=1.0)
    assert longer.audios.shape == (1, 64 * 256)

    pipe.save_pretrained(tmp_path / "m")
    saved = {p.name for p in (tmp_path / "m").iterdir()}
    assert saved == {"model_index.json", "unet", "scheduler", "codec", "pipeline.py"}
    loaded = StudioMusicPipeline.from_pretrained(tmp_path / "m")
    loaded.set_progress_bar_config(disable=True)
    kwargs = {"prompt": "a fast minor tune", "num_inference_steps": 2, "output_type": "latent"}
    a = pipe(generator=torch.Generator().manual_seed(3), **kwargs).audios
    b = loaded(generator=torch.Generator().manual_seed(3), **kwargs).audios
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("length", "message"), [(0.3, "positive multiple of 0.032"), (-1.0, "positive multiple"), (1000.0, "too long")]
)
def test_bad_audio_length(tiny_music_pipeline, length, message):
    with pytest.raises(ValueError, match=message):
        tiny_music_pipeline("a tune", audio_length_in_s=length, num_inference_steps=1)


def test_music_output_follows_diffusers_audio_conventions(tiny_music_pipeline):
    from diffusers.pipelines.pipeline_utils import AudioPipelineOutput

    kwargs = {"num_inference_steps": 1, "guidance_scale": 1.0, "generator": torch.Generator().manual_seed(0)}
    out = tiny_music_pipeline("a tune", **kwargs)
    assert isinstance(out, AudioPipelineOutput)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    as_tuple = tiny_music_pipeline("a tune", return_dict=False, **kwargs)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1  # (audios,), as diffusers' audio pipelines return
    np.testing.assert_array_equal(as_tuple[0], out.audios)


def test_step_callbacks_get_the_declared_tensors_and_unknown_names_are_refused_before_sampling(tiny_music_pipeline):
    seen = []

    def callback(pipe, step, t, tensors):
        seen.append(sorted(tensors))
        return {}

    tiny_music_pipeline(
        "a tune",
        num_inference_steps=2,
        guidance_scale=1.0,
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
    )
    assert seen == [["latents", "prompt_embeds"]] * 2
    calls = []
    with pytest.raises(ValueError, match=r"\['noise'\] unknown; use \['latents', 'prompt_embeds'\]"):
        tiny_music_pipeline(
            "a tune",
            num_inference_steps=2,
            callback_on_step_end=lambda *a: calls.append(a) or {},
            callback_on_step_end_tensor_inputs=["noise"],
        )
    assert calls == []
