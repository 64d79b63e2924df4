"""Write world samples to a folder: files, a grid picture, stems, and a manifest (``mixstudio world``)."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from studio.io import atomic_dir, write_png, write_wav
from studio.manifest import Manifest, ManifestItem, write_manifest
from studio.plots import image_grid, spectrogram_grid
from studio.worlds.base import Sample, World, sample_seed

MAX_SAMPLES = 10_000


def draw_samples(world: World, n: int, seed: int, per_prompt: int | None = None) -> list[Sample]:
    """``n`` samples of seed stream ``seed``: random captions, or ``per_prompt`` samples for each eval prompt in turn.

    Raises:
        ValueError: for ``n`` out of range or ``per_prompt`` that does not divide ``n``.
    """
    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"--n must be between 1 and {MAX_SAMPLES}, got {n}")
    if per_prompt is None:
        return [world.sample(sample_seed(seed, i)) for i in tqdm(range(n), desc=f"render {world.name}", leave=False)]
    if per_prompt < 2 or n % per_prompt:
        raise ValueError(f"--per-prompt must be >= 2 and divide --n {n}, got {per_prompt}")
    prompts = world.eval_prompts()
    return [
        world.sample_for_prompt(prompts[(i // per_prompt) % len(prompts)], sample_seed(seed, i))
        for i in tqdm(range(n), desc=f"render {world.name}", leave=False)
    ]


def export_samples(world: World, samples: list[Sample], out: str | Path, meta: dict, force: bool = False) -> Path:
    """Write samples, ``grid.png``, stems (audio) and ``manifest.json`` into ``out`` atomically."""
    items = []
    with atomic_dir(out, force=force) as tmp:
        for i, sample in enumerate(samples):
            if world.modality == "image":
                name = f"{i:04d}.png"
                write_png(tmp / name, sample.data)
            else:
                name = f"{i:04d}.wav"
                write_wav(tmp / name, sample.data, world.SAMPLE_RATE)
                (tmp / "stems").mkdir(exist_ok=True)
                for stem, audio in sample.extras.get("stems", {}).items():
                    write_wav(tmp / "stems" / f"{i:04d}_{stem}.wav", audio, world.SAMPLE_RATE)
            items.append(ManifestItem(file=name, prompt=sample.caption, seed=sample.seed, labels=sample.labels))
        shown = [s.data for s in samples[:64]]
        grid = image_grid(shown) if world.modality == "image" else spectrogram_grid(shown[:16], world.SAMPLE_RATE)
        write_png(tmp / "grid.png", grid)
        write_manifest(tmp, Manifest(world=world.name, modality=world.modality, items=items, meta=meta))
    return Path(out)
