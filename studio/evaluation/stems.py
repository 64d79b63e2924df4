"""Score a folder of separated stems against reference stems (``mixstudio eval --separation EST --reference REF``).

``EST`` is what ``mixstudio separate`` writes (``separation.json`` and ``<input>/<stem>.wav``). ``REF`` holds the
true stems either in the same layout (``REF/<input>/<stem>.wav``) or as a ``synth`` world folder writes them
(``REF/stems/<input>_<stem>.wav``, with the mixture ``REF/<input>.wav``). Scores are those of
:func:`studio.evaluation.separation.separation_scores`: BSS-eval v4 SDR (museval's convention), MDX's new SDR, SI-SDR
and, where the mixture is found, SI-SDR improvement.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from studio.evaluation.separation import separation_scores


@dataclass
class SeparationReport:
    """Per-stem and mean scores of a separated folder against its references."""

    inputs: int
    stems: list[str]
    sample_rate: int
    scores: dict[str, float]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        """One row per stem and a mean row: SDR (v4), new SDR, SI-SDR, SI-SDRi."""
        metrics = ("sdr", "new_sdr", "si_sdr", "si_sdri")
        lines = [
            f"{self.inputs} inputs at {self.sample_rate} Hz; SDR = BSS-eval v4 (museval, median of 1 s frames), "
            "new SDR = MDX, in dB",
            f"{'stem':<10} {'SDR':>7} {'new SDR':>8} {'SI-SDR':>7} {'SI-SDRi':>8}",
        ]
        for name in [*self.stems, "mean"]:
            cells = [self.scores.get(m if name == "mean" else f"{m}_{name}", math.nan) for m in metrics]
            lines.append(f"{name:<10} " + " ".join(f"{v:{w}.2f}" for v, w in zip(cells, (7, 8, 7, 8), strict=True)))
        return "\n".join(lines)


def _read(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable audio file ({err})") from None
    return audio.T, int(rate)


def _reference(ref: Path, name: str, stem: str) -> Path:
    for path in (ref / name / f"{stem}.wav", ref / "stems" / f"{name}_{stem}.wav", ref / name / f"{stem}.flac"):
        if path.is_file():
            return path
    raise ValueError(
        f"no reference for stem {stem!r} of {name!r} in {str(ref)!r}; expected {name}/{stem}.wav or "
        f"stems/{name}_{stem}.wav"
    )


def evaluate_separation(estimates: str | Path, reference: str | Path) -> SeparationReport:
    """Score every separated input of ``estimates`` against the true stems in ``reference``.

    Raises:
        ValueError: for a folder without ``separation.json``, a missing reference, or stems whose rate or length
            differ from their reference's (naming the file).
    """
    est, ref = Path(estimates), Path(reference)
    manifest = est / "separation.json"
    if not manifest.is_file():
        raise ValueError(f"{str(est)!r} has no separation.json; pass a folder written by `mixstudio separate`")
    if not ref.is_dir():
        raise ValueError(f"--reference {str(ref)!r} is not a folder; pass the folder holding the true stems")
    items = json.loads(manifest.read_text())["items"]
    stems = list(items[0]["stems"]) if items else []
    ests, refs, mixes, rate = [], [], [], None
    for item in items:
        name = Path(next(iter(item["stems"].values()))).parent.name
        pair = []
        for stem in stems:
            e, e_rate = _read(est / item["stems"][stem])
            r, r_rate = _read(_reference(ref, name, stem))
            if e_rate != r_rate or e.shape != r.shape:
                raise ValueError(
                    f"stem {stem!r} of {name!r}: estimate {e.shape} at {e_rate} Hz vs reference {r.shape} at "
                    f"{r_rate} Hz; separate the reference's mixture"
                )
            rate = e_rate
            pair.append((e, r))
        ests.append(np.stack([e for e, _ in pair]))
        refs.append(np.stack([r for _, r in pair]))
        mix = ref / f"{name}.wav"
        mixes.append(_read(mix)[0] if mix.is_file() else refs[-1].sum(0))
    if not ests:
        raise ValueError(f"{str(manifest)!r} lists no separated inputs")
    if len({e.shape[1] for e in ests}) > 1:
        raise ValueError(f"the inputs of {str(est)!r} differ in channel count; score mono and stereo sets apart")
    # zero padding to the longest clip changes no score: silent frames are skipped, and zeros add no energy
    length = max(e.shape[-1] for e in ests)
    stack = [
        torch.from_numpy(np.stack([np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, length - a.shape[-1])]) for a in arrays]))
        for arrays in (ests, refs, mixes)
    ]
    scores = separation_scores(stack[0], stack[1], stack[2], rate, stems)
    return SeparationReport(inputs=len(ests), stems=stems, sample_rate=rate, scores=scores)
