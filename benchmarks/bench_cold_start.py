"""Cold start of real commands: imports, model load and work, each in fresh processes, median of several runs.

Usage: .venv/bin/python benchmarks/bench_cold_start.py [--repo .] [--runs 3] [--threads 2] [--serve]

For ``mixstudio generate image "a red circle" -n 1`` and ``mixstudio eval`` of a 64-item ``shapes`` folder it
prints the wall time of the whole command and, from separate fresh processes, the three phases: the imports
the command performs, loading its model (the pipeline or the judge), and the work itself (sampling 25 steps and
writing; judging the folder). ``--serve`` also times ``mixstudio serve`` from launch to its first HTTP response.
``--repo`` points at another checkout (e.g. an older commit in a git worktree) to compare before and after with
the same interpreter and packages.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PHASES = {
    # what each command imports, loads and does, in the new layout (studio/generation.py) and the old one
    "generate": {
        "new": (
            "import studio.cli; from studio.generation import generate, write_samples; import studio.pipelines",
            "pipe = studio.pipelines.load_pipeline('shapes', 'image')",
            "write_samples(generate(pipe, 'a red circle', num_inference_steps=25), OUT, world='shapes')",
        ),
        "old": (
            "import studio.cli, studio.generate, studio.pipelines; from studio.pipelines.evaluation import "
            "generate_batch; from studio.io import write_png; from pathlib import Path",
            "pipe = studio.pipelines.load_pipeline('shapes', 'image')",
            "write_png(Path(OUT + '.png'), generate_batch(pipe, ['a red circle'], [0], num_inference_steps=25)[0])",
        ),
    },
    "eval": {
        "new": (
            "import studio.cli; from studio.evaluation import evaluate_folder; from studio.judges import load_judge",
            "load_judge('shapes', 'eval')",
            "evaluate_folder(FOLDER)",
        ),
        "old": (
            "import studio.cli; from studio.judges.evaluate import evaluate_folder; "
            "from studio.judges import load_judge",
            "load_judge('shapes', 'eval')",
            "evaluate_folder(FOLDER)",
        ),
    },
}

PHASE_SCRIPT = """
import time, sys
OUT, FOLDER = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
{load}
t2 = time.perf_counter()
{work}
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def run(argv: list[str], repo: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=repo, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def phases(command: str, layout: str, repo: Path, env: dict[str, str], out: str, folder: str) -> list[float]:
    imports, load, work = PHASES[command][layout]
    script = PHASE_SCRIPT.format(imports=imports, load=load, work=work)
    done = subprocess.run(
        [sys.executable, "-c", script, out, folder], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return [float(x) for x in done.stdout.split()[-3:]]


def serve_first_response(repo: Path, env: dict[str, str], workdir: str) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mixstudio = [sys.executable, "-m", "studio", "serve", "--port", str(port), "--workdir", workdir]
    start = time.perf_counter()
    server = subprocess.Popen(mixstudio, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < 300:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the server did not answer within 300 s")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help="also time `mixstudio serve` to its first response")
    args = parser.parse_args()
    repo = args.repo.resolve()
    layout = "new" if (repo / "studio" / "generation.py").is_file() else "old"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    env["PYTHONPATH"] = str(repo)
    with tempfile.TemporaryDirectory() as tmp:
        folder = f"{tmp}/eval64"
        run([sys.executable, "-m", "studio", "world", "shapes", "--n", "64", "--out", folder], repo, env)
        commands = {
            "generate": [sys.executable, "-m", "studio", "generate", "image", "a red circle", "-n", "1"],
            "eval": [sys.executable, "-m", "studio", "eval", folder, "--out", f"{tmp}/report.json"],
        }
        print(f"repo {repo} ({layout} layout), {args.threads} threads, median of {args.runs} fresh processes")
        print(f"{'command':<10} {'whole':>7} {'imports':>8} {'load':>6} {'work':>6}")
        for name, argv in commands.items():
            extra = ["--out", f"{tmp}/gen"] if name == "generate" else []
            whole = statistics.median(run(argv + extra, repo, env) for _ in range(args.runs))
            parts = [phases(name, layout, repo, env, f"{tmp}/phase-gen", folder) for _ in range(args.runs)]
            imports, load, work = (statistics.median(p[i] for p in parts) for i in range(3))
            print(f"{name:<10} {whole:7.2f} {imports:8.2f} {load:6.2f} {work:6.2f}")
        if args.serve:
            first = statistics.median(serve_first_response(repo, env, f"{tmp}/app-{i}") for i in range(args.runs))
            print(f"{'serve':<10} {first:7.2f}  (launch to the first HTTP 200 of the page)")


if __name__ == "__main__":
    main()
