"""The CLI refuses bad input: exit code 2, one line that names the input, no traceback, and nothing written.

Each case is a command line; ``{name}`` fields are paths from the ``bad`` fixture (``conftest.py``), ``{out}`` a
fresh folder that must still not exist afterwards. A case that points ``--out`` at ``{foreign}`` (a folder of the
user's own files) checks that the folder is left exactly as it was. Commands run in-process, so the suite stays fast:
most cases fail before a model is loaded, the rest within a second of loading the tiny test model.
"""

from __future__ import annotations

import shlex

import pytest

from studio.cli import main

GEN = "generate image 'a red circle' --model {model} --steps 1"
MUSIC = "generate music 'a tune' --steps 1"
SWEEP = "sweep image --model {model} --steps 1 -n 2 --guidance 1"
TRAIN_FT = "train finetune --set data.dir={root}/one-image --out {out}"

CASES: list[tuple[str, str]] = [
    # world
    ("world mars --out {out}", "unknown world 'mars'"),
    ("world shapes --n 0 --out {out}", "--n must be between 1"),
    ("world shapes --n -3 --out {out}", "--n must be between 1"),
    ("world shapes --n 100000000 --out {out}", "--n must be between 1"),
    ("world shapes --n 5 --per-prompt 2 --out {out}", "--per-prompt"),
    ("world shapes --n 4 --per-prompt 0 --out {out}", "--per-prompt"),
    ("world shapes --seed -1 --out {out}", "--seed must be a whole number"),
    ("world shapes --seed 1180591620717411303424 --out {out}", "--seed must be a whole number"),
    ("world shapes --n two --out {out}", "argument --n: invalid int value"),
    ("world synth --concept --out {out}", "--concept renders a shapes concept"),
    ("world shapes --out {file}", "is a file"),
    ("world shapes --out {foreign}", "holds files mixstudio did not write"),
    ("world shapes --out .", "is not a new folder's name"),
    ("world shapes --out ..", "is not a new folder's name"),
    ("world shapes --out /proc/x", "cannot be written here"),
    ("world shapes --out /sys/kernel/x", "cannot be written here"),
    ("world shapes --out {root}/" + "x" * 300, "File name too long"),
    ("world shapes", "the following arguments are required: --out"),
    ("world", "the following arguments are required: name"),
    # generate: prompt, counts, sampler flags
    ("generate image '' --out {out}", "prompt is empty"),
    ("generate image '   ' --out {out}", "prompt is empty"),
    ("generate image " + "x" * 2001 + " --out {out}", "prompt has 2001 characters; the limit is 2000"),
    (GEN + " --negative-prompt " + "n" * 2001 + " --out {out}", "--negative-prompt has 2001 characters"),
    (GEN + " -n 0 --out {out}", "-n gives 0 samples; allowed 1 to 256"),
    (GEN + " -n -4 --out {out}", "-n gives -4 samples"),
    (GEN + " -n 1000 --out {out}", "-n gives 1000 samples"),
    (GEN + " --prompt-set eval --out {out}", "not both"),
    ("generate image --model {model} --steps 1 --out {out}", "prompt is empty"),
    (GEN + " --steps 0 --out {out}", "--steps must be a whole number from 1 to 1000"),
    (GEN + " --steps -1 --out {out}", "--steps must be a whole number"),
    (GEN + " --steps 100000 --out {out}", "--steps must be a whole number"),
    (GEN + " --steps 2.5 --out {out}", "argument --steps: invalid int value"),
    (GEN + " --guidance nan --out {out}", "--guidance must be a finite number"),
    (GEN + " --guidance inf --out {out}", "--guidance must be a finite number"),
    (GEN + " --guidance -1 --out {out}", "--guidance must be a finite number from 0 to 100"),
    (GEN + " --guidance 1e308 --out {out}", "--guidance must be a finite number from 0 to 100"),
    (GEN + " --guidance abc --out {out}", "argument --guidance: invalid float value"),
    (GEN + " --guidance-rescale 1.5 --out {out}", "--guidance-rescale must be a finite number from 0 to 1"),
    (GEN + " --guidance-rescale -0.1 --out {out}", "--guidance-rescale"),
    (GEN + " --guidance-rescale nan --out {out}", "--guidance-rescale"),
    (GEN + " --guidance-interval 0.6 0.2 --out {out}", "--guidance-interval must satisfy"),
    (GEN + " --guidance-interval 0 2 --out {out}", "--guidance-interval must satisfy"),
    (GEN + " --guidance-interval nan 1 --out {out}", "--guidance-interval must satisfy"),
    (GEN + " --guidance-interval 0.5 0.5 --out {out}", "--guidance-interval must satisfy"),
    (GEN + " --guidance-interval 0.5 --out {out}", "argument --guidance-interval: expected 2 arguments"),
    (GEN + " --seed -1 --out {out}", "--seed must be a whole number"),
    (GEN + " --seed 1180591620717411303424 --out {out}", "--seed must be a whole number"),
    (GEN + " --scheduler plms --out {out}", "--scheduler 'plms' is unknown"),
    (GEN + " --scheduler '' --out {out}", "--scheduler '' is unknown"),
    (GEN + " --attention flash --out {out}", "--attention 'flash' is unknown"),
    # generate: models, worlds, adapters
    ("generate image x --model /no/such/model --steps 1 --out {out}", "cannot load image model '/no/such/model'"),
    ("generate image x --model no-such/hub-id --steps 1 --out {out}", "not in the local Hugging Face cache"),
    ("generate image x --model {root}/no-manifest --steps 1 --out {out}", "cannot load image model"),
    ("generate image x --model {file} --steps 1 --out {out}", "cannot load image model"),
    ("generate image x --model synth --steps 1 --out {out}", "--model 'synth' is a music model"),
    ("generate music x --model shapes --steps 1 --out {out}", "--model 'shapes' is a image model"),
    (GEN + " --world mars --out {out}", "unknown world 'mars'"),
    (GEN + " --world synth --out {out}", "--world 'synth' renders music; pick a image world"),
    (GEN + " --adapter {root}/none.safetensors --out {out}", "is not a file"),
    (GEN + " --adapter {root} --out {out}", "holds neither adapter_config.json (PEFT) nor"),
    (GEN + " --adapter {adapter} --adapter {adapter} --adapter-scale 1 2 3 --out {out}", "unrecognized arguments"),
    (GEN + " --adapter {adapter} --adapter-scale 1 --adapter-scale 2 --adapter-scale 3 --out {out}", "got 3"),
    (GEN + " --adapter {garbage} --out {out}", "is not a readable safetensors file"),
    (GEN + " --adapter {no-header} --out {out}", "has no 'studio_adapter' header"),
    (GEN + " --adapter {bad-json} --out {out}", "header that is not valid JSON"),
    (GEN + " --adapter {no-targets} --out {out}", "header without a valid 'targets'"),
    (GEN + " --adapter {nan-adapter} --out {out}", "is not finite (NaN or inf)"),
    (GEN + " --adapter {adapter} --adapter-scale 1e30 --out {out}", "--adapter-scale must be a finite number"),
    (GEN + " --adapter {adapter} --adapter-scale nan --out {out}", "--adapter-scale must be a finite number"),
    (GEN + " --adapter {adapter} --adapter-scale -11 --out {out}", "--adapter-scale must be a finite number"),
    ("generate image x --steps 1 --adapter {adapter} --out {out}", "was trained on base model"),
    # generate: music length
    (MUSIC + " --length 0.001 --out {out}", "--length must be a positive multiple of"),
    (MUSIC + " --length 0 --out {out}", "--length must be a finite number"),
    (MUSIC + " --length -2 --out {out}", "--length must be a finite number"),
    (MUSIC + " --length nan --out {out}", "--length must be a finite number"),
    (MUSIC + " --length 500 --out {out}", "--length 500.0 is too long"),
    (MUSIC + " --length 100000 --out {out}", "--length must be a finite number from 0.001 to 600"),
    (MUSIC + " --length 1.3 --out {out}", "--length must be a positive multiple of 0.256 s"),
    # generate: destinations
    (GEN + " --out {file}", "is a file"),
    (GEN + " --out {foreign}", "holds files mixstudio did not write"),
    (GEN + " --out .", "is not a new folder's name"),
    (GEN + " --out ..", "is not a new folder's name"),
    (GEN + " --out /proc/x", "cannot be written here"),
    (GEN + " --out /sys/x", "cannot be written here"),
    (GEN + " --out {root}/" + "y" * 300, "File name too long"),
    (GEN + " --out {file}/sub", "is a file, so"),
    # sweep
    (SWEEP.replace("--guidance 1", "--guidance 2 2") + " --out {out}", "distinct"),
    (SWEEP.replace("--guidance 1", "--guidance nan") + " --out {out}", "--guidance must be a finite number"),
    (SWEEP.replace("--guidance 1", "--guidance -2") + " --out {out}", "--guidance must be a finite number"),
    (SWEEP.replace("--guidance 1", "--guidance 1e9") + " --out {out}", "--guidance must be a finite number"),
    (SWEEP.replace("-n 2", "-n 1") + " --out {out}", "at least 2"),
    (SWEEP.replace("-n 2", "-n 0") + " --out {out}", "-n must be a whole number"),
    (SWEEP.replace("-n 2", "-n 1000") + " --out {out}", "-n must be a whole number"),
    (SWEEP.replace("--steps 1", "--steps 0") + " --out {out}", "--steps must be a whole number"),
    (SWEEP + " --guidance-interval 0.5 0.5 --out {out}", "--guidance-interval must satisfy"),
    (SWEEP + " --guidance-rescale 7 --out {out}", "--guidance-rescale"),
    (SWEEP + " --seed -5 --out {out}", "--seed must be a whole number"),
    (SWEEP + " --scheduler magic --out {out}", "--scheduler 'magic' is unknown"),
    (SWEEP + " --world synth --out {out}", "--world 'synth' renders music"),
    (SWEEP + " --world mars --out {out}", "unknown world 'mars'"),
    (SWEEP + " --attention flash --out {out}", "--attention 'flash' is unknown"),
    ("sweep music --model shapes --steps 1 -n 2 --guidance 1 --out {out}", "--model 'shapes' is a image model"),
    (SWEEP + " --out {foreign}", "holds files mixstudio did not write"),
    (SWEEP + " --out /proc/x", "cannot be written here"),
    (SWEEP + " --out {file}", "is a file"),
    (SWEEP + " --judge best --out {out}", "argument --judge: invalid choice"),
    # eval of a folder
    ("eval", "give a samples FOLDER to score"),
    ("eval {root}/missing", "is not a folder"),
    ("eval {file}", "is not a folder"),
    ("eval {no-manifest}", "has no manifest.json"),
    ("eval {bad-json-manifest}", "is not valid JSON"),
    ("eval {empty-items}", "non-empty 'items' list"),
    ("eval {unknown-world}", "world 'mars' is unknown"),
    ("eval {outside}", "lies outside the folder"),
    ("eval {missing-file}", "does not exist"),
    ("eval {no-prompt}", "has no 'prompt'"),
    ("eval {wrong-size}", "expects 32x32"),
    ("eval {not-png}", "not a readable image"),
    ("eval {bomb}", "too large to decode safely"),
    ("eval {empty-wav}", "holds no samples"),
    ("eval {stereo-wav}", "has 2 channels"),
    ("eval {8k-wav}", "is 8000 Hz"),
    ("eval {contradiction}", "contradicts world 'synth'"),
    ("eval {bad-labels}", "'labels' must map attribute names to value names"),
    ("eval {one-image} --reference 0", "--reference must be a whole number from 2 to 10000"),
    ("eval {one-image} --reference -5", "--reference must be a whole number"),
    ("eval {one-image} --reference 1000000000", "--reference must be a whole number"),
    ("eval {one-image} --out {root}", "is a folder; pass a file path"),
    ("eval {one-image} --judge best", "argument --judge: invalid choice"),
    # eval --pareto
    ("eval --pareto image --model {model}", "--pareto writes a new folder"),
    ("eval {one-image} --pareto image --out {out}", "--pareto writes a new folder"),
    ("eval --pareto image --model {model} --student nolabel --out {out}", "must be LABEL=MODEL"),
    ("eval --pareto image --model {model} --student =x --out {out}", "must be LABEL=MODEL"),
    (
        "eval --pareto image --model {model} --quality {model} --out {out}",
        "merges need both --quality and --diversity",
    ),
    ("eval --pareto image --model {model} -n 1 --out {out}", "at least 2"),
    ("eval --pareto image --model {model} --lambdas 1.5 --out {out}", "[0, 1]"),
    ("eval --pareto image --model {model} --steps 0 --out {out}", "--steps must be a whole number"),
    ("eval --pareto image --model {model} --guidance nan --out {out}", "--guidance must be a finite number"),
    ("eval --pareto image --model synth --out {out}", "--model 'synth' is a music model"),
    ("eval --pareto image --model {model} --student s=/no/such --out {out}", "cannot load image model '/no/such'"),
    ("eval --pareto image --model {model} --out {foreign}", "holds files mixstudio did not write"),
    ("eval --pareto painting --out {out}", "argument --pareto: invalid choice"),
    # train
    ("train", "the following arguments are required: recipe"),
    ("train judge-mars-eval", "unknown recipe"),
    ("train judge-shapes-eval --set nope=1", "unknown config key 'nope'"),
    ("train judge-shapes-eval --set epochs=0", "epochs must be positive"),
    ("train judge-shapes-eval --set epochs=ten", "expected int"),
    ("train judge-shapes-eval --set epochs", "is not key=value"),
    ("train finetune --set lr=nan --out {out}", "--set lr=nan: expected a finite number"),
    ("train finetune --set lr=2 --out {out}", "lr must be in (0, 1)"),
    ("train finetune --set lr=-1 --out {out}", "lr must be in (0, 1)"),
    ("train finetune --set grad_clip=nan --out {out}", "--set grad_clip=nan: expected a finite number"),
    ("train finetune --set grad_clip=-1 --out {out}", "grad_clip must be positive"),
    ("train finetune --set max_minutes=nan --out {out}", "--set max_minutes=nan: expected a finite number"),
    ("train finetune --set max_minutes=0 --out {out}", "max_minutes must be positive"),
    ("train finetune --set prior_weight=nan --out {out}", "--set prior_weight=nan: expected a finite number"),
    ("train finetune --set prior_weight=-1 --out {out}", "prior_weight must be >= 0"),
    ("train finetune --set class_guidance=nan --out {out}", "--set class_guidance=nan: expected a finite number"),
    ("train finetune --set batch_size=0 --out {out}", "batch_size must be positive"),
    ("train finetune --set max_steps=-5 --out {out}", "max_steps must be positive"),
    ("train finetune --set num_workers=-1 --out {out}", "num_workers must be >= 0"),
    ("train finetune --set adapter.method=magic --out {out}", "adapter.method='magic' is unknown"),
    ("train finetune --set adapter.rank=eight --out {out}", "adapter.rank=eight: expected int"),
    ("train finetune --set adapter.method=oft --set adapter.rank=8 --out {out}", "OFTConfig has no fields"),
    ("train finetune --set adapter.rank=0 --out {out}", "LoRAConfig.rank=0 is invalid"),
    ("train finetune --set attention=flash --out {out}", "attention 'flash' is unknown"),
    ("train finetune --set mixed_precision=fp8 --out {out}", "allowed values"),
    ("train finetune --set data.dir={root}/missing --out {out}", "is not a folder"),
    ("train finetune --out {out}", "no concept files: set data.dir"),
    ("train finetune --set data.dir={no-manifest} --out {out}", "has no .png"),
    ("train finetune --set data.dir={wrong-size} --out {out}", "expects 32x32"),
    ("train finetune --set base=/no/such/model --set data.dir={one-image} --out {out}", "cannot load image model"),
    (TRAIN_FT.replace("--out {out}", "--out {file}"), "is a file"),
    ("train reward-shapes --set backprop_steps=20 --out {out}", "backprop_steps 20 exceeds sample_steps"),
    ("train pretrain-shapes --set world=mars --out {out}", "allowed values are ['shapes', 'synth']"),
    # merge
    ("merge shapes --weights 1 --out {out}", "give at least two models"),
    ("merge shapes shapes-quality --weights 1 --out {out}", "got 1 weights for 2 models"),
    ("merge shapes shapes-quality --weights nan 1 --out {out}", "merge weights must be finite numbers"),
    ("merge shapes shapes-quality --weights 1e38 1e38 --out {out}", "merge weights must be between -10 and 10"),
    ("merge shapes shapes-quality shapes-diversity --alpha 0.5 --out {out}", "--alpha needs exactly two"),
    ("merge shapes synth --weights 0.5 0.5 --out {out}", "cannot merge 'shapes' and 'synth'"),
    ("merge shapes shapes-quality --alpha 0.5 --out {foreign}", "holds files mixstudio did not write"),
    ("merge shapes shapes-quality --alpha 0.5 --out {file}", "is a file"),
    ("merge shapes shapes-quality --alpha 0.5 --out /proc/x", "cannot be written here"),
    ("merge shapes shapes-quality --alpha 0.5", "the following arguments are required: --out"),
    ("merge shapes shapes-quality --alpha 0.5 --weights 1 1 --out {out}", "not allowed with argument"),
    ("merge {model} {root}/none.safetensors --weights 1 --out {out}", "does not exist"),
    ("merge {model} {nan-adapter} --weights 1 --out {out}", "is not finite (NaN or inf)"),
    ("merge {model} {adapter} --weights 99 --out {out}", "merge weights must be between -10 and 10"),
    ("merge shapes {adapter} --weights 1 --out {out}", "was trained on base model"),
    ("merge {model} {adapter} shapes --weights 1 1 --out {out}", "give a model followed only by adapter"),
    # adapter export / import
    ("adapter export {adapter} --format onnx --out {out}", "--format 'onnx' is unknown; use one of"),
    (
        "adapter export {oft-adapter} --format kohya --out {out}.safetensors",
        "formats that hold oft: ['peft', 'dense']",
    ),
    ("adapter export {oft-adapter} --format lycoris --out {out}.safetensors", "which lycoris cannot hold exactly"),
    ("adapter export {oft-adapter} --format diffusers --out {out}", "which diffusers cannot hold exactly"),
    ("adapter export {root}/none.safetensors --format peft --out {out}", "does not exist"),
    ("adapter export {garbage} --format peft --out {out}", "is not a readable safetensors file"),
    ("adapter export {no-header} --format kohya --out {out}.safetensors", "match no known adapter format"),
    ("adapter export {nan-adapter} --format kohya --out {out}.safetensors", "is not finite (NaN or inf)"),
    ("adapter export {adapter} --format peft --out {foreign}", "holds files mixstudio did not write"),
    ("adapter export {adapter} --format peft --out {file}", "is a file"),
    ("adapter export {adapter} --format kohya --out {out}", "must be a .safetensors file path"),
    ("adapter export {adapter} --format kohya --out {garbage}", "exists and mixstudio did not write it"),
    ("adapter export {adapter} --out {out}", "the following arguments are required: --format"),
    ("adapter", "the following arguments are required: action"),
    ("adapter convert {adapter}", "invalid choice: 'convert'"),
    ("adapter import {root}/none.safetensors --out {out}.safetensors", "does not exist"),
    ("adapter import {garbage} --out {out}.safetensors", "is not a readable safetensors file"),
    ("adapter import {no-header} --out {out}.safetensors", "match no known adapter format"),
    ("adapter import {bad-json} --out {out}.safetensors", "header that is not valid JSON"),
    ("adapter import {foreign} --out {out}.safetensors", "holds neither adapter_config.json (PEFT) nor"),
    ("adapter import {adapter} --out {out}", "must be a .safetensors file path"),
    ("adapter import {adapter} --out {garbage}", "exists and is no mixstudio adapter"),
    ("adapter import {adapter} --base /no/such/model --out {out}.safetensors", "is neither an embedded model nor"),
    # global flags
    ("--threads 0 world shapes --out {out}", "--threads must be a whole number from 1 to 256"),
    ("--threads 100000 world shapes --out {out}", "--threads must be a whole number"),
    ("--threads x world shapes --out {out}", "argument --threads: invalid int value"),
    ("frobnicate", "invalid choice: 'frobnicate'"),
    # serve (checks before the server starts)
    ("serve --port 0 --workdir {out}", "--port must be from 1 to 65535"),
    ("serve --port 70000 --workdir {out}", "--port must be from 1 to 65535"),
    ("serve --workdir {file}", "is a file"),
    ("serve --model {no-manifest} --workdir {out}", "has no model_index.json"),
]


def fill(command: str, bad: dict, out) -> list[str]:
    values = {name: str(path) for name, path in bad.items()} | {"out": str(out)}
    text = command
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):  # {nan-adapter} before {adapter}
        text = text.replace("{" + name + "}", shlex.quote(value))
    return shlex.split(text)


def snapshot(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_corpus_is_large_and_distinct():
    assert len(CASES) >= 150 and len({command for command, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("command", "message"), CASES, ids=[c[:60] for c, _ in CASES])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(command, message, bad, tmp_path, capsys):
    out = tmp_path / "out"
    before = snapshot(bad["foreign"])
    code = main(["--quiet", *fill(command, bad, out)])
    stdout, stderr = capsys.readouterr()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (code, stdout, stderr)
    assert "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0], lines[0]
    assert not out.exists() and snapshot(bad["foreign"]) == before
    assert not [p for p in tmp_path.iterdir()]  # no temporary siblings either
