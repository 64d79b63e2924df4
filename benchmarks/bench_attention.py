"""Attention on a GPU: studio's Triton kernels against SDPA's backends, xformers and FlexAttention.

Usage: .venv/bin/python benchmarks/bench_attention.py [--rounds 10] [--reps 20] [--quick] [--json out.json]
       .venv/bin/python benchmarks/bench_attention.py --errors   # max abs error vs the float32 reference

bfloat16, forward and forward+backward, at SD 1.5 shapes (batch 2, 8 heads; head dim 40/80/160 at 4096/1024/256
query tokens; self-attention and 77-key cross-attention) and SDXL shapes (head dim 64: 10 heads at 4096 tokens,
20 at 1024); one SD 1.5-sized UNet denoising step (random weights, batch 2, 64x64 latents) per backend; and the
two-branch kernel against two SDPA calls plus the weighted sum. Variants run alternately, in an order that
rotates every round; the table shows the median ms, achieved TFLOP/s, share of the GPU's dense bf16 peak, and
the median over rounds of each variant's time / the best SDPA backend's time in that round.

Without CUDA it prints which backends exist here and exits 0 (``--errors`` then runs the Triton interpreter at
the small shapes of tests/kernels). Nothing in docs/ATTENTION.md quotes a time that this script has not printed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from studio.attention import available_backends, set_backend
from studio.kernels import (
    FlashAttentionFunction,
    attention_reference,
    flash_attention,
    load_kernels,
    triton_environment,
    two_branch_attention,
    two_branch_reference,
)

#: Dense bfloat16 peak TFLOP/s by GPU name fragment (first match wins).
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)  # fmt: skip


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    heads: int
    seq_q: int
    seq_k: int
    head_dim: int

    def flops(self) -> float:
        """Forward FLOPs: two matmuls of 2·Lq·Lk·D per (batch, head)."""
        return 4.0 * self.batch * self.heads * self.seq_q * self.seq_k * self.head_dim


def shapes(quick: bool) -> list[Shape]:
    sd15 = [(4096, 40), (1024, 80), (256, 160)]
    out = []
    for seq, dim in sd15[:1] if quick else sd15:
        out += [Shape(f"sd15 self d{dim}", 2, 8, seq, seq, dim), Shape(f"sd15 cross77 d{dim}", 2, 8, seq, 77, dim)]
    for seq, heads in [] if quick else [(4096, 10), (1024, 20)]:
        out += [
            Shape(f"sdxl self {heads}h", 2, heads, seq, seq, 64),
            Shape(f"sdxl cross77 {heads}h", 2, heads, seq, 77, 64),
        ]
    return out


def sdpa_variant(backend: torch.nn.attention.SDPBackend | None) -> Callable:
    def run(q, k, v):
        context = torch.nn.attention.sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
        with context:
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(
                1, 2
            )

    return run


def variants() -> dict[str, Callable]:
    """Name → ``fn(q, k, v)`` on (B, L, H, D) tensors. SDPA names start with ``sdpa``."""
    from torch.nn.attention import SDPBackend

    found = {
        "sdpa:cudnn": sdpa_variant(SDPBackend.CUDNN_ATTENTION),
        "sdpa:flash": sdpa_variant(SDPBackend.FLASH_ATTENTION),
        "sdpa:efficient": sdpa_variant(SDPBackend.EFFICIENT_ATTENTION),
        "triton": flash_attention,
    }
    if importlib.util.find_spec("xformers") is not None:
        import xformers.ops

        found["xformers"] = xformers.ops.memory_efficient_attention
    with contextlib.suppress(ImportError):
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False)
        found["flex"] = lambda q, k, v: flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return found


def time_ms(fn: Callable[[], object], reps: int) -> float:
    """ms per call of ``fn``; its ``setup`` attribute (e.g. installing processors) runs first, untimed."""
    getattr(fn, "setup", lambda: None)()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def rotate_rounds(calls: dict[str, Callable[[], object]], rounds: int, reps: int) -> dict[str, list[float]]:
    """Per-round ms of every call, timed alternately in an order that rotates every round."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(time_ms(calls[name], reps))
    return times


def summarise(times: dict[str, list[float]], baseline_prefix: str = "sdpa") -> dict[str, dict[str, float]]:
    """Median ms and the median over rounds of ms / the best baseline's ms in the same round."""
    base = [
        min(times[n][r] for n in times if n.startswith(baseline_prefix))
        for r in range(len(next(iter(times.values()))))
    ]
    return {
        name: {"ms": statistics.median(ms), "ratio": statistics.median(t / b for t, b in zip(ms, base))}
        for name, ms in times.items()
    }


def working(calls: dict[str, Callable[[], object]]) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """The calls that run (three warm-up runs each; compiles and autotunes happen here) and why others do not."""
    ok, failed = {}, {}
    for name, call in calls.items():
        try:
            getattr(call, "setup", lambda: None)()
            for _ in range(3):
                call()
            torch.cuda.synchronize()
            ok[name] = call
        except Exception as err:  # a backend refusing a shape is a result, not a crash
            failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:90] if str(err) else ''}"
    return ok, failed


def grad_call(fn: Callable, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    def call():
        out = fn(*inputs)
        return torch.autograd.grad(out, inputs, torch.ones_like(out))

    return call


def peak_tflops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def report(title: str, flops: float | None, summary: dict, failed: dict, peak: float | None, rows: list) -> None:
    print(f"\n{title}")
    for name, s in sorted(summary.items(), key=lambda kv: kv[1]["ms"]):
        tflops = flops / (s["ms"] * 1e-3) / 1e12 if flops else None
        share = f"{100 * tflops / peak:5.1f}%" if tflops and peak else "    - "
        rate = f"{tflops:7.1f}" if tflops else "      -"
        print(f"  {name:<16} {s['ms']:9.3f} ms {rate} TFLOP/s {share} of peak   x{s['ratio']:.3f} vs best sdpa")
        rows.append({"case": title, "variant": name, **s, "tflops": tflops})
    for name, why in failed.items():
        print(f"  {name:<16} n/a ({why})")


def padded_triton(head_dim: int) -> Callable | None:
    """The Triton kernel with the head dim padded to one power-of-two tile (64 for 40), where ours splits it
    (32 + 16): the split's measured gain is this variant's time over ``triton``'s. None where nothing is split."""
    kernels = load_kernels(interpret=False)
    config = kernels.kernel_config(head_dim, split_head_dim=False)
    if config == kernels.kernel_config(head_dim):
        return None
    return lambda q, k, v: FlashAttentionFunction.apply(q, k, v, None, head_dim**-0.5, config)


def bench_shape(shape: Shape, fns: dict[str, Callable], args, peak, rows) -> None:
    padded = padded_triton(shape.head_dim)
    fns = fns if padded is None else {**fns, "triton:padded-d": padded}
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(shape.batch, n, shape.heads, shape.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
        for n in (shape.seq_q, shape.seq_k, shape.seq_k)
    )
    ok, failed = working({name: (lambda fn=fn: fn(q, k, v)) for name, fn in fns.items()})
    times = rotate_rounds(ok, args.rounds, args.reps)
    report(f"{shape.name} forward", shape.flops(), summarise(times), failed, peak, rows)
    leaves = tuple(t.detach().requires_grad_() for t in (q, k, v))
    ok, failed = working({name: grad_call(fn, leaves) for name, fn in fns.items() if name in ok})
    times = rotate_rounds(ok, args.rounds, args.reps)
    # backward = 2.5x the forward's FLOPs (five matmuls, one of them the recomputed QK^T)
    report(f"{shape.name} forward+backward", 3.5 * shape.flops(), summarise(times), failed, peak, rows)


def unfused_two_branch(q, k1, v1, k2, v2, w1, w2):
    """The reference recipe: two SDPA calls (PyTorch's pick of kernel) and the weighted sum."""
    sdpa = sdpa_variant(None)
    return w1.unsqueeze(-1) * sdpa(q, k1, v1) + w2.unsqueeze(-1) * sdpa(q, k2, v2)


def bench_two_branch(name: str, seq_k2: int, args, peak, rows) -> None:
    """Fused two-branch attention against two SDPA calls plus the weighted sum (IP-Adapter and MoA shapes)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k1, v1, k2, v2 = (
        torch.randn(2, n, 8, 40, device="cuda", dtype=torch.bfloat16, generator=g)
        for n in (4096, 77, 77, seq_k2, seq_k2)
    )
    w1 = torch.rand(2, 4096, 1, device="cuda", dtype=torch.bfloat16, generator=g)
    inputs = (q, k1, v1, k2, v2, w1, 1 - w1)
    flops = 4.0 * 2 * 8 * 4096 * (77 + seq_k2) * 40
    fns = {"sdpa x2 + combine": unfused_two_branch, "triton two-branch": two_branch_attention}
    ok, failed = working({n: (lambda fn=fn: fn(*inputs)) for n, fn in fns.items()})
    report(f"{name} forward", flops, summarise(rotate_rounds(ok, args.rounds, args.reps)), failed, peak, rows)
    leaves = tuple(t.detach().requires_grad_() for t in inputs)
    ok, failed = working({n: grad_call(fn, leaves) for n, fn in fns.items()})
    times = rotate_rounds(ok, args.rounds, args.reps)
    report(f"{name} forward+backward", 3.5 * flops, summarise(times), failed, peak, rows)


def bench_unet(args, peak, rows) -> None:
    """One SD 1.5-sized UNet step (random weights, bf16, batch 2 = one CFG pair) per backend."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from torch.nn.attention import SDPBackend

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).to("cuda", torch.bfloat16).eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    text = torch.randn(2, 77, 768, device="cuda", dtype=torch.bfloat16, generator=g)
    t = torch.tensor([500, 500], device="cuda")

    def step(processor_backend: str | None, sdpa_backend=None) -> Callable[[], object]:
        def call():
            context = torch.nn.attention.sdpa_kernel(sdpa_backend) if sdpa_backend else contextlib.nullcontext()
            with torch.no_grad(), context:
                return unet(x, t, text).sample

        def setup():  # untimed: the variants share one UNet and take turns
            if processor_backend is None:
                unet.set_attn_processor(AttnProcessor2_0())
            else:
                set_backend(unet, processor_backend)

        call.setup = setup
        return call

    calls = {
        "sdpa (stock AttnProcessor2_0)": step(None),
        "sdpa:cudnn": step("sdpa", SDPBackend.CUDNN_ATTENTION),
        "sdpa:flash": step("sdpa", SDPBackend.FLASH_ATTENTION),
        "sdpa:efficient": step("sdpa", SDPBackend.EFFICIENT_ATTENTION),
        "triton": step("triton"),
    }
    if available_backends("cuda")["xformers"] is None:
        calls["xformers"] = step("xformers")
    ok, failed = working(calls)
    times = rotate_rounds(ok, args.rounds, max(1, args.reps // 4))
    report("SD 1.5 UNet step (batch 2, 64x64 latents, 77 tokens)", None, summarise(times), failed, peak, rows)


def max_errors(fn: Callable, ref: Callable, inputs: tuple[torch.Tensor, ...]) -> list[float]:
    """Max abs error of the output and of every input's gradient (one fixed random output gradient)."""
    leaves = tuple(t.detach().requires_grad_() for t in inputs)
    out, ref_out = fn(*leaves), ref(*leaves)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(100)).to(out)
    grads = torch.autograd.grad(out, leaves, grad)
    ref_grads = torch.autograd.grad(ref_out, leaves, grad)
    return [(a.float() - b.float()).abs().max().item() for a, b in zip((out, *grads), (ref_out, *ref_grads))]


def errors(device: str) -> None:
    """Max abs errors of the Triton kernels vs the float32 reference (interpreter shapes on CPU, SD shapes on GPU)."""
    load_kernels(interpret=device == "cpu")
    if device == "cpu":  # the shapes of tests/kernels
        cases = [(n, q, k, d, torch.float32) for n, q, k in [("self", 50, 50), ("cross77", 37, 77), ("keys8", 33, 8)]
                 for d in (40, 64, 80)] + [("cross77", 37, 77, 40, torch.float16)]  # fmt: skip
        batch, heads = 2, 2
    else:
        cases = [(f"sd15 {n}", q, k, d, dt) for n, q, k, d in [("self", 4096, 4096, 40), ("cross77", 4096, 77, 40),
                 ("self", 1024, 1024, 80), ("cross77", 1024, 77, 80), ("self", 256, 256, 160)]
                 for dt in (torch.bfloat16, torch.float16)]  # fmt: skip
        batch, heads = 2, 8
    g = torch.Generator().manual_seed(0)
    print(f"{'case':<16} {'dim':>4} {'dtype':<9} {'out':>9} {'dq':>9} {'dk':>9} {'dv':>9}")
    for name, seq_q, seq_k, dim, dtype in cases:
        q, k, v = (torch.randn(batch, n, heads, dim, generator=g).to(device, dtype) for n in (seq_q, seq_k, seq_k))
        errs = max_errors(flash_attention, attention_reference, (q, k, v))
        print(f"{name:<16} {dim:>4} {str(dtype)[6:]:<9} " + " ".join(f"{e:9.2e}" for e in errs))
    print(
        f"\n{'two-branch':<24} {'out':>9} {'dq':>9} {'dk1':>9} {'dv1':>9} {'dk2':>9} {'dv2':>9} {'dw1':>9} {'dw2':>9}"
    )
    seq_q, dtype = (37, torch.float32) if device == "cpu" else (4096, torch.bfloat16)
    for name, seq_k1, seq_k2, dim in [("77+8 d40", 77, 8, 40), ("50+77 d80", 50, 77, 80)]:
        q, k1, v1 = (torch.randn(batch, n, heads, dim, generator=g).to(device, dtype) for n in (seq_q, seq_k1, seq_k1))
        k2, v2 = (torch.randn(batch, seq_k2, heads, dim, generator=g).to(device, dtype) for _ in range(2))
        w = torch.rand(batch, seq_q, 1, generator=g).to(device, dtype)
        errs = max_errors(two_branch_attention, two_branch_reference, (q, k1, v1, k2, v2, w, 1 - w))
        print(f"{name} {str(dtype)[6:]:<14} " + " ".join(f"{e:9.2e}" for e in errs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of alternating timings (medians over rounds)")
    parser.add_argument("--reps", type=int, default=20, help="calls per timing")
    parser.add_argument("--quick", action="store_true", help="one SD 1.5 shape, no SDXL, no UNet")
    parser.add_argument("--errors", action="store_true", help="print max abs errors vs the reference and exit")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.errors:
        errors(device)
        return 0
    if device == "cpu":
        print("no CUDA device: nothing to time. Attention backends in this process (None = can run on cuda):")
        for name, why in available_backends("cuda").items():
            print(f"  {name:<10} {'ready' if why is None else why}")
        print(f"  triton on cpu: {triton_environment(torch.device('cpu')) or 'ready (interpreter)'}")
        flex = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
        print(f"  FlexAttention: {'present' if flex else 'absent'}")
        return 0
    peak = peak_tflops()
    print(f"{torch.cuda.get_device_name()}: dense bf16 peak {peak or 'unknown'} TFLOP/s; torch {torch.__version__}")
    rows: list[dict] = []
    fns = variants()
    for shape in shapes(args.quick):
        bench_shape(shape, fns, args, peak, rows)
    for name, seq_k2 in [("ip-adapter 77+4 d40", 4), ("moa 77+77 d40", 77)]:
        bench_two_branch(name, seq_k2, args, peak, rows)
    if not args.quick:
        bench_unet(args, peak, rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
