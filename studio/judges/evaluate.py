"""Score a folder of samples described by a manifest (``mixstudio eval DIR``)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from studio.io import atomic_write_text, read_image, read_wav
from studio.judges import load_judge
from studio.judges.metrics import frechet_distance, grouped_diversity, prompt_adherence
from studio.manifest import Manifest, read_manifest
from studio.models.zoo import Role
from studio.worlds import Prompt, World, get_world, sample_seed
from studio.worlds.base import to_tensor

logger = logging.getLogger(__name__)

#: World samples for the Fréchet reference come from this seed stream.
REFERENCE_SEED = 424_242


@dataclass
class EvalReport:
    """What ``mixstudio eval`` prints and writes.

    Attributes:
        world, judge: which world and which judge role scored the folder.
        samples: number of files scored; prompts: number of distinct prompts.
        adherence: fraction of samples whose judged attributes all match their prompt.
        attribute_adherence: the same per attribute named by the prompts.
        label_accuracy: per-attribute judge accuracy against ground-truth labels (world folders only).
        diversity: mean within-prompt pairwise ``1 − cos`` of judge embeddings (None: one sample per prompt).
        frechet: Fréchet distance of judge embeddings to world samples of the same prompts.
        frechet_floor: the same distance between two world sample sets of this folder's size (finite-sample floor).
    """

    world: str
    judge: str
    samples: int
    prompts: int
    adherence: float
    attribute_adherence: dict[str, float]
    label_accuracy: dict[str, float] | None
    diversity: float | None
    frechet: float
    frechet_floor: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        """A plain-text summary for the terminal."""
        lines = [
            f"world {self.world} · judge {self.judge} · {self.samples} samples · {self.prompts} prompts",
            f"adherence           {self.adherence:.3f}",
        ]
        lines += [f"  {attr:<17} {value:.3f}" for attr, value in self.attribute_adherence.items()]
        if self.label_accuracy:
            lines.append("label accuracy      " + "  ".join(f"{k} {v:.3f}" for k, v in self.label_accuracy.items()))
        div = "n/a (one sample per prompt)" if self.diversity is None else f"{self.diversity:.4f}"
        lines += [
            f"diversity           {div}",
            f"frechet             {self.frechet:.3f} (floor {self.frechet_floor:.3f})",
        ]
        return "\n".join(lines)


def load_samples(folder: Path, manifest: Manifest, world: World) -> torch.Tensor:
    """Read every file of the manifest as a batch: images ``(N, 3, H, W)`` or audio ``(N, T)``."""
    arrays = []
    for item in tqdm(manifest.items, desc="read samples", unit="file", leave=False, mininterval=2):
        path = folder / item.file
        arrays.append(read_image(path, getattr(world, "SIZE", None)) if world.modality == "image" else read_wav(path))
    if world.modality == "audio":
        lengths = {len(a) for a in arrays}
        if len(lengths) > 1:
            longest = max(lengths)
            arrays = [np.pad(a, (0, longest - len(a))) for a in arrays]
    return torch.stack([to_tensor(a) for a in arrays])


def reference_samples(world: World, prompts: list[Prompt], count: int, offset: int = 0) -> torch.Tensor:
    """World samples for ``prompts`` (cycled) from the reference seed stream."""
    batch = []
    for i in range(count):
        prompt = prompts[i % len(prompts)]
        batch.append(to_tensor(world.sample_for_prompt(prompt, sample_seed(REFERENCE_SEED, offset + i)).data))
    return torch.stack(batch)


def evaluate_folder(folder: str | Path, role: Role = "eval", reference_size: int = 256) -> EvalReport:
    """Judge every sample in ``folder`` against its prompt.

    Args:
        folder: a folder with ``manifest.json`` (see :mod:`studio.manifest`).
        role: which judge scores (``eval`` for reporting; ``reward`` to compare against the training signal).
        reference_size: world samples drawn for the Fréchet reference.

    Raises:
        ValueError: for a malformed manifest or unreadable/wrong-format files (naming the file).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    world = get_world(manifest.world)
    judge = load_judge(world.name, role)
    data = load_samples(folder, manifest, world)
    prompts = [Prompt(item.prompt, world.parse_prompt(item.prompt)) for item in manifest.items]
    judged, embeddings = judge.predict(data)

    adherence = prompt_adherence(judged, [p.labels for p in prompts])
    label_accuracy = None
    if all(item.labels for item in manifest.items):
        truth = [world.check_labels(item.labels, complete=True) for item in manifest.items]
        label_accuracy = {
            attr: sum(j[attr] == t[attr] for j, t in zip(judged, truth, strict=True)) / len(truth)
            for attr in world.attributes
        }
    diversity = grouped_diversity(embeddings, [p.text for p in prompts])

    _, ref = judge.predict(reference_samples(world, prompts, max(reference_size, len(prompts))))
    _, floor = judge.predict(reference_samples(world, prompts, len(prompts), offset=10**6))
    return EvalReport(
        world=world.name,
        judge=role,
        samples=len(prompts),
        prompts=len({p.text for p in prompts}),
        adherence=adherence.overall,
        attribute_adherence=adherence.per_attribute,
        label_accuracy=label_accuracy,
        diversity=diversity,
        frechet=frechet_distance(embeddings, ref),
        frechet_floor=frechet_distance(floor, ref),
    )


def write_report(report: EvalReport, path: Path) -> None:
    atomic_write_text(path, report.to_json() + "\n")
