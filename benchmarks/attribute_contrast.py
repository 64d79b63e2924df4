"""Does a music model render one attribute? A judge-free probe on time-averaged mel band profiles.

Usage:
    .venv/bin/python benchmarks/attribute_contrast.py [--model synth] [--attribute mode] [--contexts 6] [--clips 8]

For each of ``--contexts`` random settings of the other five attributes, the probe takes two values
``a``/``b`` of ``--attribute`` and

- renders ``--clips`` world clips of each value and encodes them with the model's own mel codec: the
  world's direction ``d = mean profile(a) − mean profile(b)``, where a profile is a clip's mel averaged
  over time (one level per band);
- generates ``--clips`` clips from each of the two prompts that name every attribute (training
  phrasing, one template and one set of phrases for both, so the prompts differ in the attribute's
  words alone), with the *same* initial noise for both prompts.

It prints, per context and on average, the **rendered fraction** ``⟨ḡ_a − ḡ_b, d⟩ / ‖d‖²`` (1: the
prompt's word moves the output as far as the world's attribute does; 0: the word is ignored) and a
**centroid accuracy**: how many generated clips lie nearer the world mean of their own value than of the
other (0.5 is chance); the same accuracy on fresh world clips is the ceiling. Attributes that mark the
band profile (``mode``, ``key``, ``lead``, ``bass``) are what this measures; tempo lives in onsets,
not in a time average, and is left to the judges.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from studio.pipelines import load_pipeline
from studio.worlds import get_world, sample_seed

PROFILE_ATTRIBUTES = ("mode", "key", "lead", "bass")
#: A world stream apart from the training streams (the recipes' ``data_seed``) and the judges'.
WORLD_SEED = 31337


def full_caption(world, labels: dict[str, str], seed: int) -> str:
    """The first caption of ``seed``'s stream that names every attribute (a fifth of captions do).

    The subset and template draws do not depend on the values, and each value of ``mode``, ``lead`` and
    ``bass`` has as many phrases as the others, so two label sets that differ in one of those get the
    same template and the same words for every other attribute (sharp keys have more phrases than
    natural ones, so a ``key`` pair may also differ in later words).
    """
    for k in range(200):
        prompt = world.caption(labels, np.random.default_rng([seed, k]))
        if set(prompt.labels) == set(world.attributes):
            return prompt.text
    raise RuntimeError(f"no caption of seed {seed} named every attribute")  # pragma: no cover


def profiles(mels: torch.Tensor) -> torch.Tensor:
    """``(B, 1, M, F)`` mels → ``(B, M)`` time-averaged band levels."""
    return mels[:, 0].float().mean(dim=2)


def centroid_accuracy(clips: dict[str, torch.Tensor], means: dict[str, torch.Tensor]) -> float:
    """Fraction of the profiles in ``clips`` (``{value: (B, M)}``, two values) nearer their own value's mean."""
    (a, b) = clips
    own = [(clips[v] - means[v]).norm(dim=1) < (clips[v] - means[o]).norm(dim=1) for v, o in ((a, b), (b, a))]
    return float(torch.cat(own).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synth", help="embedded name or pipeline folder")
    parser.add_argument("--attribute", default="mode", choices=PROFILE_ATTRIBUTES)
    parser.add_argument("--contexts", type=int, default=6, help="settings of the other attributes")
    parser.add_argument("--clips", type=int, default=8, help="world and generated clips per value and context")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = load_pipeline(args.model, "audio")
    pipe.set_progress_bar_config(disable=True)
    world = get_world("synth")
    values = world.attributes[args.attribute]
    fractions, gen_hits, world_hits = [], [], []
    print(f"model {args.model}, attribute {args.attribute}, w = {args.guidance}, {args.steps} steps")
    print("| context | a | b | rendered fraction | centroid acc. (generated) | centroid acc. (world) |")
    print("|---|---|---|---|---|---|")
    for c in range(args.contexts):
        rng = np.random.default_rng([WORLD_SEED, c])
        context = world.sample_labels(rng)
        a, b = (values[int(i)] for i in rng.choice(len(values), size=2, replace=False))
        means, gens, fresh = {}, {}, {}
        for value in (a, b):
            labels = {**context, args.attribute: value}
            waves = [world.sample(sample_seed(WORLD_SEED + c, i), labels).data for i in range(2 * args.clips)]
            world_profiles = profiles(pipe.encode(torch.from_numpy(np.stack(waves))))
            means[value], fresh[value] = world_profiles[: args.clips].mean(0), world_profiles[args.clips :]
            generator = torch.Generator().manual_seed(c)  # the same noise for both values
            out = pipe(
                [full_caption(world, labels, WORLD_SEED + c)] * args.clips,
                guidance_scale=args.guidance,
                num_inference_steps=args.steps,
                generator=generator,
                output_type="latent",
            )
            gens[value] = profiles(out.audios)
        direction = means[a] - means[b]
        fraction = float((gens[a].mean(0) - gens[b].mean(0)) @ direction / direction.square().sum())
        fractions.append(fraction)
        gen_hits.append(centroid_accuracy(gens, means))
        world_hits.append(centroid_accuracy(fresh, means))
        shown = ", ".join(f"{k}={v}" for k, v in context.items() if k != args.attribute)
        print(f"| {shown} | {a} | {b} | {fraction:+.3f} | {gen_hits[-1]:.3f} | {world_hits[-1]:.3f} |")
    print(
        f"| mean of {args.contexts} | | | {np.mean(fractions):+.3f} ± {np.std(fractions):.3f} "
        f"| {np.mean(gen_hits):.3f} | {np.mean(world_hits):.3f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
