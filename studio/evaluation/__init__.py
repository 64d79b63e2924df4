"""The one evaluation route: score samples in memory; folders, guidance sweeps and Pareto runs build on it.

- :func:`score_samples` judges arrays against their prompts (adherence, diversity, Fréchet distance);
- :func:`evaluate_folder` reads a folder's manifest and files and scores them the same way (``mixstudio eval``);
- :func:`guidance_sweep` and :func:`pareto_eval` sample, write a folder per point and score what they wrote.
"""

from studio.evaluation.folder import evaluate_folder, load_samples, write_report
from studio.evaluation.pareto import ParetoPoint, ParetoReport, pareto_eval
from studio.evaluation.scoring import EvalReport, reference_samples, score_samples
from studio.evaluation.sweep import SweepPoint, SweepReport, guidance_sweep, sample_and_score

__all__ = [
    "EvalReport",
    "ParetoPoint",
    "ParetoReport",
    "SweepPoint",
    "SweepReport",
    "evaluate_folder",
    "guidance_sweep",
    "load_samples",
    "pareto_eval",
    "reference_samples",
    "sample_and_score",
    "score_samples",
    "write_report",
]
