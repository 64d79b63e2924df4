"""Sampling wall time of the embedded models: 4 images x 25 steps and 2 clips x 25 steps, with and without CFG.

Usage: .venv/bin/python benchmarks/bench_sampling.py [--threads 2] [--repeats 3]

Prints the median of ``--repeats`` runs (after one warm-up) and the CFG / no-CFG ratio measured
side by side in the same process, which is what to compare across machines. Where the CFG-distilled
quality students ship (``shapes-quality``, ``synth-quality``), they are timed too, unguided: the speed-up
of the student over its guided teacher at the same step count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from studio.models.zoo import model_dir
from studio.pipelines import load_pipeline


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: first call pays for allocator growth and lazy init
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    cases = [("shapes", "image", "a red circle", 4), ("synth", "audio", "a fast minor tune with a rock beat", 2)]
    cases = [(model, modality, prompt, count, (4.0, 1.0)) for model, modality, prompt, count in cases]
    for world, modality, prompt, count, _ in list(cases):
        student = f"{world}-quality"
        try:
            model_dir(student)
        except ValueError:
            continue
        cases.append((student, modality, prompt, count, (1.0,)))
    for model, modality, prompt, count, scales in cases:
        pipe = load_pipeline(model, modality)
        key = "num_images_per_prompt" if modality == "image" else "num_waveforms_per_prompt"
        for guidance in scales:

            def run(guidance=guidance, pipe=pipe, key=key, count=count, prompt=prompt):
                with torch.inference_mode():
                    pipe(
                        prompt,
                        num_inference_steps=args.steps,
                        guidance_scale=guidance,
                        output_type="np",
                        generator=torch.Generator().manual_seed(0),
                        **{key: count},
                    )

            rows.append((model, count, guidance, timed(run, args.repeats)))

    print(f"threads={args.threads} steps={args.steps} (median of {args.repeats})")
    print(f"{'model':<16} {'batch':>5} {'guidance':>8} {'seconds':>8}")
    for model, count, guidance, seconds in rows:
        print(f"{model:<16} {count:>5} {guidance:>8.1f} {seconds:>8.2f}")
    seconds = {(m, g): s for m, _, g, s in rows}
    for model in ("shapes", "synth"):
        cfg = seconds[model, 4.0]
        print(f"{model}: CFG costs {cfg / seconds[model, 1.0]:.2f}x the unguided sampler")
        if (f"{model}-quality", 1.0) in seconds:
            print(f"{model}-quality (unguided) samples {cfg / seconds[f'{model}-quality', 1.0]:.2f}x faster than w=4")


if __name__ == "__main__":
    main()
