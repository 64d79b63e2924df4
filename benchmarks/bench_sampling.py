"""Sampling wall time of the embedded models: 4 images x 25 steps and 2 clips x 25 steps, with and without CFG.

Usage: .venv/bin/python benchmarks/bench_sampling.py [--threads 2] [--rounds 5] [--interval-high 0.4] [--compile]

Per world, every variant runs once per round in rotating order in one process (``benchmarks/timing.py``): the
base model guided at w = 4, guided only at noise levels ``t/T <= --interval-high`` (steps above it run the
conditional model alone), unguided (w = 1), and the CFG-distilled quality student where it ships, unguided.
Ratios are medians of per-round ratios; the one-thread CPU-time ratio beside each is a second figure that load
on the other core barely moves.

``--compile`` adds each variant again with its UNet compiled (``unet.compile(dynamic=False)``, torch inductor;
on CPU it needs a C++ compiler); compilation happens in the warm-up round and is reported apart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import paired

from studio.models.zoo import model_dir
from studio.pipelines import load_pipeline


def sampler(pipe, prompt: str, count: int, steps: int, **kwargs):
    """One call that samples ``count`` images or clips from seed 0."""
    key = "num_images_per_prompt" if not hasattr(pipe, "codec") else "num_waveforms_per_prompt"

    def run() -> None:
        with torch.inference_mode():
            pipe(prompt, num_inference_steps=steps, output_type="np", generator=torch.Generator().manual_seed(0),
                 **kwargs, **{key: count})  # fmt: skip

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--interval-high", type=float, default=0.4, help="top of the guided noise levels t/T")
    parser.add_argument("--compile", action="store_true", help="also time each model with its UNet compiled")
    parser.add_argument("--no-cpu-time", action="store_true", help="skip the one-thread CPU-time rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    limited = f"w=4, t/T<={args.interval_high:g}"
    settings = {"w=4": {"guidance_scale": 4.0}, limited: {"guidance_scale": 4.0}, "w=1": {"guidance_scale": 1.0}}
    settings[limited]["guidance_interval"] = (0.0, args.interval_high)
    cases = [("shapes", "image", "a red circle", 4), ("synth", "audio", "a fast minor tune with a rock beat", 2)]
    for world, modality, prompt, count in cases:
        models = [world]
        try:
            model_dir(f"{world}-quality")
            models.append(f"{world}-quality")
        except ValueError:
            pass
        variants = {}
        for unet in ("eager", "compiled") if args.compile else ("eager",):
            for model in models:
                pipe = load_pipeline(model, modality)
                if unet == "compiled":
                    pipe.unet.compile(dynamic=False)  # one graph per batch size: CFG doubles it
                for name in settings if model == world else ["w=1"]:
                    label = f"{model} {name}" + (" compiled" if unet == "compiled" else "")
                    variants[label] = sampler(pipe, prompt, count, args.steps, **settings[name])
        start = time.perf_counter()
        result = paired(variants, rounds=args.rounds, cpu_time=not args.no_cpu_time)
        print(f"\n{world}: batch {count}, {args.steps} steps ({time.perf_counter() - start:.0f} s in all)")
        print(result.table(reference=f"{world} w=4"))
        for unet in ("", " compiled") if args.compile else ("",):
            guided, unguided = f"{world} w=4{unet}", f"{world} w=1{unet}"
            print(f"CFG costs {result.ratio(guided, unguided):.2f}x the unguided sampler{unet}")
            print(f"CFG at t/T<={args.interval_high:g} costs {result.ratio(f'{world} {limited}{unet}', guided):.2f}x "
                  f"CFG at every step{unet}")  # fmt: skip
            student = f"{world}-quality w=1{unet}"
            if student in variants:
                wall, cpu = result.ratio(guided, student), result.ratio(guided, student, cpu=True)
                print(f"{world}-quality (unguided) samples {wall:.2f}x faster than w=4{unet} (CPU time {cpu:.2f}x)")
        if args.compile:
            for label in [v for v in variants if not v.endswith("compiled")]:
                print(f"compiled {label}: {result.ratio(label, label + ' compiled'):.2f}x faster than eager")


if __name__ == "__main__":
    main()
