"""Per-layer forward+backward time and activation memory of every adapter method, against PEFT's version.

Usage: .venv/bin/python benchmarks/bench_adapters.py [--threads 2] [--repeats 5] [--quick] [--json out.json]
       [--methods boft boft-3 boft-4] [--path auto|weight|activations]

One ``nn.Linear(width, width)`` (an SD attention projection) on ``(batch, tokens, width)`` inputs that need a
gradient, as inside a UNet. For each shape and method: the median wall time of forward + backward (after a
warm-up), and the bytes autograd saves for the backward pass beyond the layer's own weights (the activation
memory a method adds; CPU peak-RSS deltas are too noisy to compare). Per shape, every layer (the bare
``nn.Linear``, each of our methods, each PEFT counterpart) runs once per round in rotating order
(``benchmarks/timing.py``), and each ratio is the median of per-round ratios: ours / PEFT for the methods PEFT
implements (LoRA, OFT, BOFT, LoKr; DiffuseKronA against PEFT's LoKr with a full-rank second factor, the same
ΔW = A ⊗ B), ours / our LoRA and ours / the bare layer for every method. ``--cpu-time`` adds the ratio of
one-thread process CPU times, which load on the other core barely moves.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from timing import paired

from studio.adapters import (
    BOFTConfig,
    DiffuseKronAConfig,
    ETHERConfig,
    ETHERPlusConfig,
    GOFTConfig,
    LoKrConfig,
    LoRAConfig,
    OFTConfig,
    QGOFTConfig,
    add_adapter,
)


class Holder(nn.Module):
    """One target layer named ``layer`` (both libraries inject by module name)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layer = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def ours(config, weight_path: bool | None = None) -> Callable[[int], nn.Module]:
    def build(width: int) -> nn.Module:
        model = Holder(width)
        add_adapter(model, "a", config, targets=["layer"], generator=torch.Generator().manual_seed(0))
        model.layer.weight_path = weight_path
        return model

    return build


def peft(make_config: Callable[[int], object]) -> Callable[[int], nn.Module]:
    def build(width: int) -> nn.Module:
        from peft import inject_adapter_in_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return inject_adapter_in_model(make_config(width), Holder(width))

    return build


def peft_configs():
    import peft
    import peft.tuners.boft.layer as boft_layer

    boft_layer.get_fbd_cuda = lambda: None  # never try to compile PEFT's CUDA extension on a CPU machine
    target = {"target_modules": ["layer"]}
    return {
        "lora": lambda d: peft.LoraConfig(r=8, lora_alpha=8, **target),
        "oft": lambda d: peft.OFTConfig(r=0, oft_block_size=32, use_cayley_neumann=False, **target),
        "oft-neumann": lambda d: peft.OFTConfig(
            r=0, oft_block_size=32, use_cayley_neumann=True, num_cayley_neumann_terms=5, **target
        ),
        "boft": lambda d: peft.BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=2, **target),
        "lokr": lambda d: peft.LoKrConfig(r=8, alpha=8, decompose_factor=8, **target),
        "diffusekrona": lambda d: peft.LoKrConfig(r=d, alpha=d, decompose_factor=8, **target),  # full-rank w2
    }


#: Our methods at SD-like settings; OFT's Neumann variant uses 4 terms after I (PEFT counts I as a term).
METHODS = {
    "lora": LoRAConfig(rank=8),
    "oft": OFTConfig(block_size=32),
    "oft-neumann": OFTConfig(block_size=32, cayley="neumann", neumann_terms=4),
    "boft": BOFTConfig(block_size=8, factors=2),
    "boft-3": BOFTConfig(block_size=8, factors=3),
    "boft-4": BOFTConfig(block_size=8, factors=4),
    "goft": GOFTConfig(),
    "qgoft": QGOFTConfig(),
    "ether": ETHERConfig(num_blocks=4),
    "etherplus": ETHERPlusConfig(num_blocks=4),
    "diffusekrona": DiffuseKronAConfig(a1=8, a2=8),
    "lokr": LoKrConfig(rank=8, factor=8),
}


@dataclass
class Layer:
    """One layer under test: its forward+backward step, the MB it saves for backward, its trainable count."""

    step: Callable[[], None]
    saved_mb: float
    trainable: int


def prepare(model: nn.Module, x: torch.Tensor) -> Layer:
    """A forward+backward step on ``x`` (run once here, for the saved-tensor census) and the layer's sizes."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

    def step() -> None:
        x.grad = None
        model.zero_grad(set_to_none=True)
        model(x).backward(grad_out)

    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own and storage.data_ptr() != x.untyped_storage().data_ptr():
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad and p is not model.layer.weight)
    return Layer(step, sum(saved.values()) / 2**20, trainable)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--widths", type=int, nargs="+", default=[320, 640, 1280])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="one small shape (tokens 1024, width 320)")
    parser.add_argument(
        "--path",
        choices=["auto", "weight", "activations"],
        default="auto",
        help="where our adapters other than the LoRA reference apply (auto: the layer decides)",
    )
    parser.add_argument("--json", default=None, help="also write every measurement here")
    parser.add_argument("--cpu-time", action="store_true", help="also time each round at one thread (CPU time)")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.widths = [1024], [320]
    torch.set_num_threads(args.threads)
    theirs = peft_configs()
    weight_path = {"auto": None, "weight": True, "activations": False}[args.path]

    rows = []
    print(
        f"threads={args.threads} batch={args.batch}; {args.repeats} rounds, rotating order, ratios = medians of "
        f"per-round ratios; path={args.path}; base = the bare nn.Linear"
    )
    header = f"{'tokens':>6} {'width':>5} {'method':<13} {'params':>8} {'ms':>8} {'saved MB':>8}"
    print(f"{header} {'PEFT ms':>8} {'PEFT MB':>8} {'÷PEFT':>6} {'÷LoRA':>6} {'÷base':>6} {'÷LoRA cpu':>9}")
    for tokens in args.tokens:
        for width in args.widths:
            x = torch.randn(args.batch, tokens, width, generator=torch.Generator().manual_seed(0)).requires_grad_()
            names = ["lora", *[m for m in args.methods if m != "lora"]]
            layers = {"base": prepare(Holder(width), x)}
            for name in names:
                path = None if name == "lora" else weight_path  # the reference stays where the layer puts it
                layers[name] = prepare(ours(METHODS[name], path)(width), x)
                if name in theirs:
                    layers[f"peft {name}"] = prepare(peft(theirs[name])(width), x)
            timed = paired({k: v.step for k, v in layers.items()}, rounds=args.repeats, cpu_time=args.cpu_time)
            for name in names:
                mine, other = layers[name], layers.get(f"peft {name}")
                vs_peft = f"{timed.ratio(name, 'peft ' + name):6.2f}" if other else f"{'-':>6}"
                peft_ms = timed.median(f"peft {name}") * 1e3 if other else None
                peft_cols = f"{peft_ms:8.1f} {other.saved_mb:8.1f}" if other else f"{'-':>8} {'-':>8}"
                print(
                    f"{tokens:>6} {width:>5} {name:<13} {mine.trainable:>8} {timed.median(name) * 1e3:8.1f} "
                    f"{mine.saved_mb:8.1f} {peft_cols} {vs_peft} {timed.ratio(name, 'lora'):6.2f} "
                    f"{timed.ratio(name, 'base'):6.2f} {timed.ratio(name, 'lora', cpu=True):9.2f}",
                    flush=True,
                )
                rows.append(
                    {
                        "tokens": tokens,
                        "width": width,
                        "method": name,
                        "params": mine.trainable,
                        "seconds": timed.median(name),
                        "saved_mb": mine.saved_mb,
                        "peft_params": other.trainable if other else None,
                        "peft_seconds": timed.median(f"peft {name}") if other else None,
                        "peft_saved_mb": other.saved_mb if other else None,
                        "base_seconds": timed.median("base"),
                        "ratio_peft": timed.ratio(name, f"peft {name}") if other else None,
                        "ratio_lora": timed.ratio(name, "lora"),
                    }
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
