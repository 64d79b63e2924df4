"""The ``synth`` world: 2 s music loops with drum, bass and lead stems, and captions that name them.

Six categorical attributes: ``tempo`` (three bpm bands with gaps between them), ``key`` (12 roots),
``mode`` (major/minor), ``lead`` (five timbres), ``drums`` (four patterns) and ``bass`` (three
styles). The music is built so each attribute is recoverable from a log-mel spectrogram: the clip
opens on the tonic chord and stays there for at least 60% of its length, the bass sits on chord roots,
the melody leans on the tonic triad (so its third fixes the mode), and every beat carries a note
onset, so tempo is audible even without drums.

Scores (notes and drum hits) are composed here; :mod:`studio.worlds.synth_dsp` turns them into sound.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from studio.worlds.base import Labels, Phrase, PhraseTable, Prompt, Split, World, phrase_list
from studio.worlds.synth_dsp import LEAD_VOICES, SAMPLE_RATE, Hit, Note, bass, render_hits, render_notes

KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
#: ``{attribute: values}``; value order is the judges' class order.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "tempo": ("slow", "medium", "fast"),
    "key": KEYS,
    "mode": ("major", "minor"),
    "lead": ("pluck", "organ", "square", "pad", "bell"),
    "drums": ("none", "rock", "disco", "halftime"),
    "bass": ("sustained", "pulsing", "walking"),
}
#: bpm is drawn uniformly inside a band; the gaps between bands keep the classes separable.
TEMPO_BPM = {"slow": (70.0, 88.0), "medium": (100.0, 118.0), "fast": (132.0, 150.0)}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
#: The optional second chord, as a 0-based scale degree: IV/iv, V/v, VI/bVI.
SECOND_CHORDS = (3, 4, 5)
#: The tonic chord fills at least this share of the clip.
TONIC_SHARE = 0.6
#: Chance that a lead beat is split into two eighths (sustained timbres split less).
EIGHTH_PROB = {"pluck": 0.5, "organ": 0.35, "square": 0.5, "pad": 0.15, "bell": 0.25}
#: Walking-bass lines, as scale steps above the chord root on beats 1-4. Over the tonic: root, octave,
#: then a stepwise walk down that avoids the fifth, so even a two- or three-beat tonic span leaves the
#: key's root the dominant bass pitch class. Over the second chord: an arpeggio or step line upwards.
TONIC_WALKS = ((0, 7, 2, 1), (0, 7, 6, 5), (0, 7, 5, 4))
CHORD_WALKS = ((0, 2, 4, 2), (0, 1, 2, 4), (0, 4, 2, 1))
#: Drum patterns: hit kind -> beat positions within a 4-beat bar.
_EIGHTHS = tuple(i / 2 for i in range(8))
DRUM_PATTERNS: dict[str, dict[str, tuple[float, ...]]] = {
    "none": {},
    "rock": {"kick": (0, 2), "snare": (1, 3), "closed_hat": _EIGHTHS},
    "disco": {"kick": (0, 1, 2, 3), "snare": (1, 3), "open_hat": (0.5, 1.5, 2.5, 3.5), "closed_hat": (0, 1, 2, 3)},
    "halftime": {"kick": (0,), "snare": (2,), "closed_hat": _EIGHTHS},
}
DRUM_VELOCITY = {"kick": 1.0, "snare": 0.9, "closed_hat": 0.5, "open_hat": 0.45}
#: Stem loudness (RMS) before the common peak normalisation; equal levels keep lead and bass audible.
STEM_RMS = {"drums": 0.2, "bass": 0.2, "lead": 0.2}
PEAK = 0.9
EVAL_SEED = 20240611


def _key_phrases() -> dict[str, list[Phrase]]:
    """``in c`` / ``in the key of c sharp`` for training; ``rooted in c`` / ``centred on c`` held out.

    Flat spellings are not offered: a frozen text encoder cannot know that "a flat" is "g sharp".
    """
    table = {}
    for key in KEYS:
        spoken = key[0].lower() + (" sharp" if key.endswith("#") else "")
        phrases = [
            Phrase(f"in {spoken}"),
            Phrase(f"in the key of {spoken}"),
            Phrase(f"rooted in {spoken}", "held_out"),
            Phrase(f"centred on {spoken}", "held_out"),
        ]
        if key.endswith("#"):
            phrases += [Phrase(f"in {key.lower()}"), Phrase(f"in the key of {key.lower()}")]
        table[key] = phrases
    return table


def _phrases(train: str, held_out: str) -> list[Phrase]:
    """``phrase_list`` of ``;``-separated phrase strings (keeps the vocabulary table compact)."""
    return phrase_list(train.split(";"), held_out.split(";"))


PHRASES: dict[str, dict[str, list[Phrase]]] = {
    "tempo": {
        "slow": _phrases("slow;laid-back;relaxed", "slow-paced;slowly paced"),
        "medium": _phrases("mid-tempo;moderate;medium-tempo", "medium-paced;moderately paced"),
        "fast": _phrases("fast;upbeat;quick", "fast-paced;very fast"),
    },
    "key": _key_phrases(),
    "mode": {
        "major": _phrases("major;happy;bright", "major-key;happy-sounding"),
        "minor": _phrases("minor;sad;melancholic", "minor-key;sad-sounding"),
    },
    "lead": {
        "pluck": _phrases("plucked;pluck;harp-like", "plucked-string;pluck-like"),
        "organ": _phrases("organ;church organ;drawbar organ", "electric organ"),
        "square": _phrases("square lead;chiptune;8-bit", "square wave"),
        "pad": _phrases("pad;ambient pad;synth pad", "lush pad"),
        "bell": _phrases("bell;chimes;bells", "bell-like;chiming bells"),
    },
    "drums": {
        "none": _phrases("no drums;without drums;drumless", "no percussion"),
        "rock": _phrases("rock beat;backbeat;rock drums", "rock groove"),
        "disco": _phrases("disco beat;four on the floor;dance beat", "four-to-the-floor"),
        "halftime": _phrases("half-time beat;halftime groove;halftime drums", "half-time feel"),
    },
    "bass": {
        "sustained": _phrases("long bass notes;droning bass;sustained bass", "held bass notes"),
        "pulsing": _phrases("pulsing bass;driving bass;eighth-note bass", "pulsing bassline;pulsed bass"),
        "walking": _phrases("walking bass;moving bass line;walking bass line", "wandering bass line"),
    },
}

# A template is a sequence of segments; a segment holding an unnamed attribute's slot is dropped.
# "text|fallback" keeps the fallback when the slot is dropped. "@" is an article resolved against the
# next word ("a", "an", or nothing before major/minor, which would read as the key of A).
TRAIN_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("@", "{tempo}", "{mode}", "tune", "{key}", "with @ {lead} melody", ", {drums}", ", {bass}"),
    ("@", "{mode}", "{lead} melody|melody", "{key}", ", {tempo}", ", {drums}", ", {bass}"),
    ("@", "{mode}", "{tempo}", "track", "featuring {lead}", "{key}", ", {bass}", ", {drums}"),
    ("{tempo}", "{mode}", "{lead}", "song", "{key}", "with {bass}", ", {drums}"),
    ("{drums}", ", {bass}", ", {lead}", ", {tempo}", ", {mode}", ", {key}"),
)
HELD_OUT_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("@", "{tempo}", "{mode}", "piece", "{key}", "led by @ {lead} line", ", {bass}", ", {drums}"),
    ("{mode}", "music", "{key}", "at @ {tempo} pace", ", {lead} on top", ", {drums}", ", {bass}"),
    ("@", "{mode}", "{lead}", "number", "{key}", ", {tempo}", ", {bass}", ", {drums}"),
)
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Score:
    """What a clip plays: tempo, chords and the notes/hits of each stem.

    Attributes:
        bpm: tempo in beats per minute.
        chords: ``(scale degree, first beat, end beat)`` spans; the first is always the tonic (degree 0).
        lead, bass: pitched notes of the lead and bass stems.
        hits: drum hits (empty for ``drums="none"``).
    """

    bpm: float
    chords: tuple[tuple[int, int, int], ...]
    lead: tuple[Note, ...]
    bass: tuple[Note, ...]
    hits: tuple[Hit, ...]


class SynthWorld(World):
    """Procedural music loops: 2.048 s of mono 16 kHz audio with ``drums``, ``bass`` and ``lead`` stems.

    ``render`` returns the mixture and ``extras = {"stems": {...}, "bpm": float}``; the mixture is the
    exact sum of the stems, all scaled by one factor to a 0.9 peak.
    """

    name = "synth"
    modality = "audio"
    SAMPLE_RATE = SAMPLE_RATE
    #: 2.048 s; a power of two so a mel front end at hop 256 sees 128 frames.
    NUM_SAMPLES = 32768
    attributes = ATTRIBUTES
    phrases = PhraseTable(PHRASES)

    def render(self, labels: Labels, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """Render a clip with exactly these labels.

        Args:
            labels: a value for every attribute.
            rng: all randomness (bpm, notes, rhythm, velocities, detune, humanisation, phases).

        Returns:
            ``(mixture, extras)``: mixture ``(T,)`` float32 with peak 0.9, ``T = NUM_SAMPLES``;
            ``extras = {"stems": {"drums": (T,), "bass": (T,), "lead": (T,)}, "bpm": float}``.
        """
        labels = self.check_labels(labels, complete=True)
        score = compose(labels, self.NUM_SAMPLES / SAMPLE_RATE, rng)
        tuning = float(rng.uniform(-10.0, 10.0))
        stems = {
            "drums": render_hits(score.hits, self.NUM_SAMPLES, rng),
            "bass": render_notes(score.bass, bass, self.NUM_SAMPLES, rng, tuning),
            "lead": render_notes(score.lead, LEAD_VOICES[labels["lead"]], self.NUM_SAMPLES, rng, tuning),
        }
        for name, stem in stems.items():
            rms = float(np.sqrt(np.mean(np.square(stem, dtype=np.float64))))
            if rms > 0:
                stem *= np.float32(STEM_RMS[name] * rng.uniform(0.85, 1.15) / rms)
        scale = np.float32(PEAK / np.abs(stems["drums"] + stems["bass"] + stems["lead"]).max())
        stems = {name: stem * scale for name, stem in stems.items()}
        mixture = stems["drums"] + stems["bass"] + stems["lead"]
        return mixture, {"stems": stems, "bpm": score.bpm}

    def caption(self, labels: Labels, rng: np.random.Generator, split: Split = "train") -> Prompt:
        """Describe a clip by a random subset (two or more, always tempo, mode or lead) of its attributes.

        Args:
            labels: a value for every attribute.
            rng: picks the subset, the template and the phrases.
            split: ``"train"`` phrases and templates, or ``"held_out"`` ones.

        Returns:
            ``Prompt(text, labels)`` where ``labels`` holds exactly the attributes the text names.
        """
        labels = self.check_labels(labels, complete=True)
        _check_split(split)
        attrs = list(self.attributes)
        if rng.random() < 0.2:
            chosen = set(attrs)
        else:
            chosen = {str(a) for a in rng.choice(attrs, size=int(rng.integers(2, len(attrs))), replace=False)}
            if not chosen & {"tempo", "mode", "lead"}:
                chosen.add(str(rng.choice(["tempo", "mode", "lead"])))
        named = {a: labels[a] for a in attrs if a in chosen}
        return Prompt(self._compose(named, rng, split), named)

    def eval_prompts(self) -> list[Prompt]:
        """30 fixed prompts in held-out phrasing: every tempo x mode x lead, plus drums, key or bass.

        Drums appear in every other prompt (each pattern three or four times); the rest add a key or a
        bass style. Built from a fixed seed, so the list is identical on every call.
        """
        rng = np.random.default_rng(EVAL_SEED)
        prompts = []
        combos = itertools.product(self.attributes["tempo"], self.attributes["mode"], self.attributes["lead"])
        for i, (tempo, mode, lead) in enumerate(combos):
            named = {"tempo": tempo, "mode": mode, "lead": lead}
            if i % 2 == 0:
                named["drums"] = self.attributes["drums"][(i // 2) % 4]
            elif i % 4 == 1:
                named["key"] = KEYS[(7 * i) % 12]
            else:
                named["bass"] = self.attributes["bass"][(i // 4) % 3]
            named = {a: named[a] for a in self.attributes if a in named}
            prompts.append(Prompt(self._compose(named, rng, "held_out"), named))
        return prompts

    def _compose(self, named: Labels, rng: np.random.Generator, split: Split) -> str:
        """Fill a random template of ``split`` with phrases for exactly the ``named`` attribute values."""
        templates = HELD_OUT_TEMPLATES if split == "held_out" else TRAIN_TEMPLATES
        template = templates[int(rng.integers(len(templates)))]
        fills = {attr: self.phrases.pick(attr, value, rng, split) for attr, value in named.items()}
        parts = []
        for segment in template:
            segment, _, fallback = segment.partition("|")
            slot = _SLOT.search(segment)
            if slot is None:
                parts.append(segment)
            elif slot.group(1) in fills:
                parts.append(segment.replace(slot.group(0), fills[slot.group(1)]))
            else:
                parts.append(fallback)
        return _tidy(" ".join(parts))


def _check_split(split: str) -> None:
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}; pass one of those")


def _tidy(text: str) -> str:
    """Collapse spaces and commas left by dropped segments and resolve the "@" articles."""
    text = re.sub(r"\s*,[\s,]*", ", ", re.sub(r"\s+", " ", text)).strip(" ,")
    text = re.sub(r"@ (major|minor)\b", r"\1", text)
    return re.sub(r"@ (\S)", lambda m: ("an " if m.group(1) in "aeiou8" else "a ") + m.group(1), text)


# ---- composition -------------------------------------------------------------------------------------
def compose(labels: Labels, duration: float, rng: np.random.Generator) -> Score:
    """Compose a clip: bpm, chord spans, melody, bass line and drum hits.

    Args:
        labels: a value for every synth attribute.
        duration: clip length in seconds.
        rng: randomness for bpm, start offset, chords, notes and humanisation.

    Returns:
        the :class:`Score`.
    """
    bpm = float(rng.uniform(*TEMPO_BPM[labels["tempo"]]))
    beat = 60.0 / bpm
    offset = float(rng.uniform(0.0, 0.02))  # the first downbeat, a few ms in
    num_beats = math.ceil((duration - offset) / beat)
    # The tonic holds up to the first beat at or after 60% of the clip (over half, so it owns the key);
    # a second chord may take the rest.
    change = math.ceil((TONIC_SHARE * duration - offset) / beat)
    chords = [(0, 0, num_beats)]
    if change < num_beats and rng.random() < 0.6:
        chords = [(0, 0, change), (int(rng.choice(SECOND_CHORDS)), change, num_beats)]
    scale = SCALES[labels["mode"]]
    root = KEYS.index(labels["key"])
    return Score(
        bpm=bpm,
        chords=tuple(chords),
        lead=tuple(_melody(chords, scale, 60 + root, labels["lead"], beat, offset, rng)),
        bass=tuple(_bass_line(chords, scale, root, labels["bass"], beat, offset, rng)),
        hits=tuple(_drum_hits(labels["drums"], num_beats, beat, offset, rng)),
    )


def _pitch(tonic: int, scale: Sequence[int], step: int) -> int:
    """MIDI pitch of scale ``step`` (0 = tonic, 7 = octave, -1 = the scale step below the tonic)."""
    octave, degree = divmod(step, 7)
    return tonic + 12 * octave + scale[degree]


def _melody(
    chords: Sequence[tuple[int, int, int]],
    scale: Sequence[int],
    tonic: int,
    lead: str,
    beat: float,
    offset: float,
    rng: np.random.Generator,
) -> list[Note]:
    """A note on every beat from the current chord's tones (tonic triad weighted to its third).

    Steps stay within [-1, 7] above the lead tonic (MIDI 60-71), so the melody lives in octaves 4-5.
    """
    notes = []
    for degree, first, end in chords:
        tones = [(degree + k) - 7 * ((degree + k) > 7) for k in (0, 2, 4)] + ([7] if degree == 0 else [])
        weights = (0.3, 0.4, 0.2, 0.1) if degree == 0 else (0.4, 0.3, 0.3)
        strong = [int(rng.choice(tones, p=weights)) for _ in range(first, end)]
        if degree == 0 and 2 not in strong:  # the third decides the mode: make sure it sounds early
            strong[min(1, len(strong) - 1)] = 2
        for b, step in zip(range(first, end), strong, strict=True):
            t = offset + b * beat
            velocity = float(rng.uniform(0.85, 1.0))
            if rng.random() < EIGHTH_PROB[lead]:
                passing = step - 1 if step >= 7 else step + int(rng.choice((-1, 1)))
                notes.append(Note(t, 0.45 * beat, _pitch(tonic, scale, step), velocity))
                notes.append(Note(t + beat / 2, 0.45 * beat, _pitch(tonic, scale, passing), 0.75 * velocity))
            else:
                notes.append(Note(t, 0.9 * beat, _pitch(tonic, scale, step), velocity))
    return notes


def _bass_line(
    chords: Sequence[tuple[int, int, int]],
    scale: Sequence[int],
    key_root: int,
    style: str,
    beat: float,
    offset: float,
    rng: np.random.Generator,
) -> list[Note]:
    """Bass on the chord roots in octave 2 (MIDI 36-47): one long note, eighth pulses, or a walk."""
    notes = []
    for degree, first, end in chords:
        root = 36 + (key_root + scale[degree]) % 12
        start = offset + first * beat
        if style == "sustained":
            notes.append(Note(start, 0.97 * (end - first) * beat, root, 1.0))
        elif style == "pulsing":
            notes += [
                Note(start + e * beat / 2, 0.3 * beat, root, 1.0 - 0.2 * (e % 2)) for e in range(2 * (end - first))
            ]
        else:
            walks = TONIC_WALKS if degree == 0 else CHORD_WALKS
            walk = walks[int(rng.integers(len(walks)))]
            for k in range(end - first):
                step = walk[k % 4]
                pitch = root + _pitch(0, scale, degree + step) - scale[degree]
                notes.append(Note(start + k * beat, 0.9 * beat, pitch, 1.0 if step % 7 == 0 else 0.8))
    return notes


def _drum_hits(style: str, num_beats: int, beat: float, offset: float, rng: np.random.Generator) -> list[Hit]:
    """Hits of a 4-beat drum pattern over ``num_beats`` beats, with ~4 ms timing and velocity humanisation."""
    hits = []
    for kind, positions in DRUM_PATTERNS[style].items():
        for bar, position in itertools.product(range(math.ceil(num_beats / 4)), positions):
            b = 4 * bar + position
            if b < num_beats:
                t = max(0.0, offset + b * beat + float(rng.normal(0.0, 0.004)))
                hits.append(Hit(t, kind, DRUM_VELOCITY[kind] * float(rng.uniform(0.8, 1.0))))
    return hits
