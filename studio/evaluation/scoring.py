"""Score samples in memory with a world's judge: adherence to their prompts, diversity, Fréchet distance.

Every route that reports a number comes here: ``mixstudio eval`` (through :mod:`studio.evaluation.folder`, which
only reads files), guidance sweeps and Pareto runs (on the samples they just wrote), and the trainers' sample
grids. Audio is scored as it is written (16-bit PCM, :func:`studio.io.as_written`), so a folder scores the
same whether it is judged in memory or read back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from studio.judges import load_judge
from studio.judges.metrics import frechet_distance, grouped_diversity, prompt_adherence
from studio.models.zoo import Role
from studio.worlds import Prompt, World, get_world, sample_seed
from studio.worlds.base import to_tensor

#: World samples for the Fréchet reference come from this seed stream.
REFERENCE_SEED = 424_242


@dataclass
class EvalReport:
    """What ``mixstudio eval`` prints and writes.

    Attributes:
        world, judge: which world and which judge role scored the samples.
        samples: number of samples scored; prompts: number of distinct prompts.
        adherence: fraction of samples whose judged attributes all match their prompt.
        attribute_adherence: the same per attribute named by the prompts.
        label_accuracy: per-attribute judge accuracy against ground-truth labels (world samples only).
        diversity: mean within-prompt pairwise ``1 − cos`` of judge embeddings (None: one sample per prompt).
        frechet: Fréchet distance of judge embeddings to world samples of the same prompts (None: not computed,
            or fewer than two samples, where it is undefined).
        frechet_floor: the same distance between two world sample sets of this size (finite-sample floor).
    """

    world: str
    judge: str
    samples: int
    prompts: int
    adherence: float
    attribute_adherence: dict[str, float]
    label_accuracy: dict[str, float] | None
    diversity: float | None
    frechet: float | None
    frechet_floor: float | None

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
        if self.frechet is None:
            fd = "n/a (needs at least two samples)" if self.samples < 2 else "n/a (not computed)"
        else:
            fd = f"{self.frechet:.3f} (floor {self.frechet_floor:.3f})"
        lines += [f"diversity           {div}", f"frechet             {fd}"]
        return "\n".join(lines)


def reference_samples(world: World, prompts: Sequence[Prompt], count: int, offset: int = 0) -> torch.Tensor:
    """World samples for ``prompts`` (cycled) from the reference seed stream."""
    batch = []
    for i in range(count):
        prompt = prompts[i % len(prompts)]
        batch.append(to_tensor(world.sample_for_prompt(prompt, sample_seed(REFERENCE_SEED, offset + i)).data))
    return torch.stack(batch)


def as_batch(data: Sequence[np.ndarray], modality: str) -> torch.Tensor:
    """Samples as one judge batch: images ``(N, 3, H, W)`` in [-1, 1], or waveforms ``(N, T)`` (zero-padded)."""
    arrays = list(data)
    if modality == "audio":
        longest = max(len(a) for a in arrays)
        arrays = [np.pad(a, (0, longest - len(a))) for a in arrays]
    return torch.stack([to_tensor(a) for a in arrays])


def score_samples(
    data: Sequence[np.ndarray],
    prompts: Sequence[str],
    world: str | World,
    *,
    role: Role = "eval",
    reference_size: int = 256,
    labels: Sequence[Mapping[str, str]] | None = None,
) -> EvalReport:
    """Judge each sample against the attributes its prompt names.

    Args:
        data: images ``(H, W, 3)`` uint8 or waveforms ``(T,)`` at the world's rate, as written to files.
        prompts: the prompt of each sample.
        world: the world (or its name) whose judge scores.
        role: ``eval`` for reported numbers; ``reward`` to compare with what trainers optimise.
        reference_size: world samples in the Fréchet reference (0: skip the Fréchet distance).
        labels: the full ground truth of each sample, when known (world samples): adds the judge's accuracy.

    Raises:
        ValueError: for no samples, a prompt count that differs from the sample count, or bad labels.
    """
    world = get_world(world) if isinstance(world, str) else world
    if not data or len(data) != len(prompts):
        raise ValueError(f"need one prompt per sample and at least one sample, got {len(data)} and {len(prompts)}")
    judge = load_judge(world.name, role)
    parsed = [Prompt(text, world.parse_prompt(text)) for text in prompts]
    judged, embeddings = judge.predict(as_batch(data, world.modality))
    adherence = prompt_adherence(judged, [p.labels for p in parsed])
    label_accuracy = None
    if labels is not None:
        truth = [world.check_labels(item, complete=True) for item in labels]
        label_accuracy = {
            attr: sum(j[attr] == t[attr] for j, t in zip(judged, truth, strict=True)) / len(truth)
            for attr in world.attributes
        }
    frechet = floor = None
    if reference_size > 0 and len(parsed) >= 2:
        _, ref = judge.predict(reference_samples(world, parsed, max(reference_size, len(parsed))))
        _, floor_set = judge.predict(reference_samples(world, parsed, len(parsed), offset=10**6))
        frechet, floor = frechet_distance(embeddings, ref), frechet_distance(floor_set, ref)
    return EvalReport(
        world=world.name,
        judge=role,
        samples=len(parsed),
        prompts=len({p.text for p in parsed}),
        adherence=adherence.overall,
        attribute_adherence=adherence.per_attribute,
        label_accuracy=label_accuracy,
        diversity=grouped_diversity(embeddings, [p.text for p in parsed]),
        frechet=frechet,
        frechet_floor=floor,
    )


def finite_or_nan(value: float | None) -> float:
    """A report field as a plain float for tables and CSV logs (None → NaN)."""
    return math.nan if value is None else float(value)
