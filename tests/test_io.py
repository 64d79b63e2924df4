import json
import re

import numpy as np
import pytest

from studio.io import MARKER, atomic_dir, check_output_dir, read_image, read_wav, write_png, write_wav
from studio.manifest import read_manifest


def test_atomic_dir_leaves_nothing_on_error_and_keeps_the_old_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    (out / MARKER).write_text("{}")  # a folder mixstudio wrote earlier
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("new")
        raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "keep.txt"]
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_mixstudio_did_not_write_is_replaced_only_when_forced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    refused = r"holds files mixstudio did not write; .* or pass --force"
    with pytest.raises(ValueError, match=refused), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    with atomic_dir(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "new.txt"]
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:  # an empty folder is free to take
        (tmp / "a.txt").write_text("a")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (".", "is not a new folder's name"),
        ("..", "is not a new folder's name"),
        ("/proc/x", "cannot be written here"),
        ("/sys/kernel/x", "cannot be written here"),
        ("a" * 300, "cannot be written here (File name too long)"),
    ],
)
def test_unusable_destinations_are_refused_in_one_line_before_any_work(path, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        check_output_dir(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_output_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(f)
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(f / "sub")


def test_image_round_trip_and_bad_images(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", 32), img)
    with pytest.raises(ValueError, match="expects 16x16"):
        read_image(tmp_path / "a.png", 16)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_wav_round_trip_and_bad_audio(tmp_path):
    import soundfile as sf

    audio = np.sin(np.linspace(0, 200, 16000)).astype(np.float32) * 0.5
    write_wav(tmp_path / "a.wav", audio)
    np.testing.assert_allclose(read_wav(tmp_path / "a.wav"), audio, atol=1 / 32768 + 1e-6)
    sf.write(tmp_path / "fast.wav", audio, 44100)
    with pytest.raises(ValueError, match="44100 Hz; resample it to 16000"):
        read_wav(tmp_path / "fast.wav")
    sf.write(tmp_path / "stereo.wav", np.stack([audio, audio], 1), 16000)
    with pytest.raises(ValueError, match="2 channels"):
        read_wav(tmp_path / "stereo.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF junk")
    with pytest.raises(ValueError, match="not a readable WAV"):
        read_wav(tmp_path / "bad.wav")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "has no manifest.json"),
        ("{not json", "not valid JSON"),
        ({"world": "shapes", "items": []}, "non-empty 'items'"),
        ({"world": "mars", "items": [{"file": "a.png", "prompt": "x"}]}, "world 'mars' is unknown"),
        ({"world": "shapes", "items": [{"prompt": "x"}]}, "has no 'file'"),
        ({"world": "shapes", "items": [{"file": "a.png", "prompt": " "}]}, "has no 'prompt'"),
        ({"world": "shapes", "items": [{"file": "../a.png", "prompt": "x"}]}, "outside the folder"),
        ({"world": "shapes", "items": [{"file": "a.png", "prompt": "x", "labels": ["red"]}]}, "'labels' must map"),
    ],
)
def test_malformed_manifests_name_the_problem(tmp_path, content, message):
    if content is not None:
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_manifest(tmp_path)
