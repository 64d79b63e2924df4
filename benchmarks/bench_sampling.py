"""Sampling wall time of the embedded models: 4 images x 25 steps and 2 clips x 25 steps, with and without CFG.

Usage: .venv/bin/python benchmarks/bench_sampling.py [--threads 2] [--repeats 3] [--interval-high 0.4]

Prints the median of ``--repeats`` runs (after one warm-up) and the CFG / no-CFG ratio measured
side by side in the same process, which is what to compare across machines. The base models are also
timed with guidance limited to noise levels ``t/T <= --interval-high`` (steps above it run the
conditional model alone, one UNet call instead of two). Where the CFG-distilled
quality students ship (``shapes-quality``, ``synth-quality``), they are timed too, unguided: the speed-up
of the student over its guided teacher at the same step count.

``--compile`` times every row again after ``unet.compile(dynamic=False)`` (torch inductor; on CPU it
needs a C++ compiler): the compiled rows follow the eager ones in the same process, and the one-off
compilation (a minute or more per batch size on 2 cores) is reported apart, not in the median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from studio.models.zoo import model_dir
from studio.pipelines import load_pipeline


def timed(fn, repeats: int) -> tuple[float, float]:
    """``(first call, median of the next repeats)``: the first pays for allocator growth, lazy init, compiling."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--interval-high", type=float, default=0.4, help="top of the guided noise levels t/T")
    parser.add_argument("--compile", action="store_true", help="also time each model with its UNet compiled")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    interval = f"w=4, t/T<={args.interval_high:g}"
    settings = {
        "w=4": {"guidance_scale": 4.0},
        interval: {"guidance_scale": 4.0, "guidance_interval": (0.0, args.interval_high)},
        "w=1": {"guidance_scale": 1.0},
    }
    rows = []
    unets = ("eager", "compiled") if args.compile else ("eager",)
    cases = [("shapes", "image", "a red circle", 4), ("synth", "audio", "a fast minor tune with a rock beat", 2)]
    cases = [(model, modality, prompt, count, list(settings)) for model, modality, prompt, count in cases]
    for world, modality, prompt, count, _ in list(cases):
        student = f"{world}-quality"
        try:
            model_dir(student)
        except ValueError:
            continue
        cases.append((student, modality, prompt, count, ["w=1"]))
    for model, modality, prompt, count, names in cases:
        pipe = load_pipeline(model, modality)
        key = "num_images_per_prompt" if modality == "image" else "num_waveforms_per_prompt"
        for unet in unets:
            if unet == "compiled":
                pipe.unet.compile(dynamic=False)  # one graph per batch size: CFG doubles it
            for name in names:

                def run(kwargs=settings[name], pipe=pipe, key=key, count=count, prompt=prompt):
                    with torch.inference_mode():
                        pipe(
                            prompt,
                            num_inference_steps=args.steps,
                            output_type="np",
                            generator=torch.Generator().manual_seed(0),
                            **kwargs,
                            **{key: count},
                        )

                rows.append((model, count, name, unet, *timed(run, args.repeats)))

    print(f"threads={args.threads} steps={args.steps} (median of {args.repeats} after a first call)")
    print(f"{'model':<16} {'batch':>5} {'guidance':>16} {'unet':>8} {'seconds':>8} {'first call':>10}")
    for model, count, name, unet, first, seconds in rows:
        print(f"{model:<16} {count:>5} {name:>16} {unet:>8} {seconds:>8.2f} {first:>10.2f}")
    seconds = {(m, g, u): s for m, _, g, u, _, s in rows}
    for unet in unets:
        for model in ("shapes", "synth"):
            cfg = seconds[model, "w=4", unet]
            print(f"{unet} {model}: CFG costs {cfg / seconds[model, 'w=1', unet]:.2f}x the unguided sampler")
            limited = seconds[model, interval, unet] / cfg
            print(f"{unet} {model}: CFG at t/T<={args.interval_high:g} costs {limited:.2f}x CFG at every step")
            if (f"{model}-quality", "w=1", unet) in seconds:
                student = seconds[f"{model}-quality", "w=1", unet]
                print(f"{unet} {model}-quality (unguided) samples {cfg / student:.2f}x faster than w=4")
    if args.compile:
        for model, _, name, unet, _, compiled in rows:
            if unet == "compiled":
                eager = seconds[model, name, "eager"]
                print(f"compiled {model} {name}: {eager / compiled:.2f}x faster than eager")


if __name__ == "__main__":
    main()
