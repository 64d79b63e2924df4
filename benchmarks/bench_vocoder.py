"""Reconstruction quality and cost of the mel codec (``decode(encode(x))`` vs ``x``) on synth-world clips.

For each codec config: spectral convergence ``‖|S| − |Ŝ|‖_F / ‖|S|‖_F`` and log-spectral distance (dB), both on a
fixed reference STFT (n_fft 1024, hop 256) so configs compare fairly; the magnitude-only error of the mel
inversion before Griffin-Lim (``sc_mag``, on the codec's own STFT); encode+decode wall time per clip; and, with
``--judge``, the shipped eval judge's per-attribute accuracy on the reconstructions (and on the originals).

    python benchmarks/bench_vocoder.py                       # the default MelCodec config
    python benchmarks/bench_vocoder.py --n-mels 64 80 96 --n-fft 1024 2048 --judge
    python benchmarks/bench_vocoder.py --iters 16 32 64 --inverse pinv lstsq
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from studio.models.audio import MelCodec
from studio.worlds import get_world, sample_seed

REF_N_FFT, REF_HOP = 1024, 256
ATTRIBUTES = ("tempo", "key", "mode", "lead", "drums", "bass")


class LstsqMelCodec(MelCodec):
    """MelCodec whose filterbank inverse is a per-call least-squares solve (as ``torchaudio``'s InverseMelScale)."""

    def mel_to_linear(self, mel: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        db = (mel[:, 0].float() + 1.0) * (cfg.top_db / 2.0) + (cfg.max_db - cfg.top_db)
        level = torch.where(mel[:, 0] > -1.0, 10.0 ** (db * (cfg.power / 20.0)), 0.0)
        linear = torch.linalg.lstsq(self.filterbank.T[None], level, driver="gelsd").solution.clamp_min(0.0)
        linear = self.nnls(level, linear)
        return linear.pow(1.0 / cfg.power) / self.magnitude_scale


def reference_power(audio: torch.Tensor) -> torch.Tensor:
    """Full-scale-normalised power spectrogram ``(B, 513, frames)`` of the reference STFT."""
    window = torch.hann_window(REF_N_FFT)
    spec = torch.stft(audio, REF_N_FFT, REF_HOP, window=window, return_complex=True).abs() * (2 / window.sum())
    return spec.pow(2)


def spectral_metrics(audio: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip spectral convergence and log-spectral distance (dB, -80 dB floor) ``(B,)`` each."""
    p, q = reference_power(audio), reference_power(recon)
    sc = (p.sqrt() - q.sqrt()).norm(dim=(1, 2)) / p.sqrt().norm(dim=(1, 2))
    lsd = (10 * torch.log10(p + 1e-8) - 10 * torch.log10(q + 1e-8)).pow(2).mean(1).sqrt().mean(-1)
    return sc, lsd


def load_clips(n: int, seed: int) -> tuple[torch.Tensor, list[dict[str, str]]]:
    world = get_world("synth")
    samples = [world.sample(sample_seed(seed, i)) for i in range(n)]
    return torch.stack([torch.from_numpy(s.data) for s in samples]), [dict(s.labels) for s in samples]


def accuracy(predicted: list[dict[str, str]], labels: list[dict[str, str]]) -> dict[str, float]:
    return {a: sum(p[a] == t[a] for p, t in zip(predicted, labels)) / len(labels) for a in ATTRIBUTES}


def evaluate(codec: MelCodec, audio: torch.Tensor, n_iter: int, batch_size: int) -> dict[str, object]:
    """Reconstruct ``audio`` in batches; return metrics, seconds per clip and the reconstructions."""
    recons, sc_mag, seconds = [], [], 0.0
    for start in range(0, len(audio), batch_size):
        batch = audio[start : start + batch_size]
        tic = time.perf_counter()
        recons.append(codec.decode(codec.encode(batch), n_iter=n_iter))
        seconds += time.perf_counter() - tic
        true = codec.stft(batch)[..., : batch.shape[-1] // codec.config.hop_length].abs()
        est = codec.mel_to_linear(codec.encode(batch))
        sc_mag.append((true - est).norm(dim=(1, 2)) / true.norm(dim=(1, 2)))
    recon = torch.cat(recons)
    sc, lsd = spectral_metrics(audio, recon)
    return {
        "sc": sc.mean().item(),
        "sc_max": sc.max().item(),
        "lsd": lsd.mean().item(),
        "sc_mag": torch.cat(sc_mag).mean().item(),
        "ms": 1000 * seconds / len(audio),
        "recon": recon,
    }


def build_parser() -> argparse.ArgumentParser:
    default = MelCodec().config
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200, help="world clips (seeds sample_seed(--seed, i))")
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--n-mels", type=int, nargs="+", default=[default.n_mels])
    parser.add_argument("--n-fft", type=int, nargs="+", default=[default.n_fft])
    parser.add_argument("--hop", type=int, nargs="+", default=[default.hop_length])
    parser.add_argument("--f-min", type=float, nargs="+", default=[default.f_min])
    parser.add_argument("--f-max", type=float, nargs="+", default=[default.f_max])
    parser.add_argument("--power", type=float, nargs="+", default=[default.power])
    parser.add_argument("--top-db", type=float, nargs="+", default=[default.top_db])
    parser.add_argument("--nnls-iters", type=int, nargs="+", default=[default.nnls_iters])
    parser.add_argument("--iters", type=int, nargs="+", default=[default.griffin_lim_iters])
    parser.add_argument("--inverse", nargs="+", default=["pinv"], choices=["pinv", "lstsq"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (timings are quoted at 1)")
    parser.add_argument("--judge", action="store_true", help="also score with a shipped synth judge")
    parser.add_argument("--judge-role", default="eval", choices=["eval", "reward"], help="which shipped judge")
    return parser


#: table columns: (header, width, format spec)
COLUMNS = (
    ("n_mels", 6, "d"), ("n_fft", 5, "d"), ("hop", 4, "d"), ("f_min", 5, ".0f"), ("f_max", 5, ".0f"),
    ("pow", 3, ".0f"), ("top", 3, ".0f"), ("inv", 5, "s"), ("nnls", 4, "d"), ("iter", 4, "d"), ("sc", 6, ".3f"),
    ("sc_max", 6, ".3f"), ("lsd_dB", 6, ".2f"), ("sc_mag", 6, ".3f"), ("ms/clip", 7, ".1f"),
)  # fmt: skip


def format_row(values: list[object], judged: dict[str, float] | None) -> str:
    cells = [f"{v:>{width}{spec}}" for v, (_, width, spec) in zip(values, COLUMNS)]
    return " ".join(cells + [f"{judged[a]:>5.3f}" for a in ATTRIBUTES] if judged else cells)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    audio, labels = load_clips(args.clips, args.seed)
    header = [f"{name:>{width}}" for name, width, _ in COLUMNS]
    judge = None
    if args.judge:
        from studio.judges import load_judge

        judge = load_judge("synth", args.judge_role)
        original = accuracy(judge.predict(audio)[0], labels)
        print(f"{args.judge_role} judge on original clips: " + " ".join(f"{a}={original[a]:.3f}" for a in ATTRIBUTES))
        header += [f"{a[:5]:>5}" for a in ATTRIBUTES]
    print(" ".join(header))
    grid = itertools.product(
        args.n_mels,
        args.n_fft,
        args.hop,
        args.f_min,
        args.f_max,
        args.power,
        args.top_db,
        args.inverse,
        args.nnls_iters,
    )
    for n_mels, n_fft, hop, f_min, f_max, power, top_db, inverse, nnls in grid:
        codec_cls = LstsqMelCodec if inverse == "lstsq" else MelCodec
        codec = codec_cls(
            n_mels=n_mels,
            n_fft=n_fft,
            hop_length=hop,
            f_min=f_min,
            f_max=f_max,
            power=power,
            top_db=top_db,
            nnls_iters=nnls,
        )
        for n_iter in args.iters:
            r = evaluate(codec, audio, n_iter, args.batch_size)
            judged = accuracy(judge.predict(r["recon"])[0], labels) if judge is not None else None
            values = [n_mels, n_fft, hop, f_min, f_max, power, top_db, inverse, nnls, n_iter]
            values += [r["sc"], r["sc_max"], r["lsd"], r["sc_mag"], r["ms"]]
            print(format_row(values, judged), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
