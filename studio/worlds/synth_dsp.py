"""Signal side of the ``synth`` world: oscillators, envelopes, instrument voices and drum one-shots.

Everything is vectorised numpy on float32 buffers at :data:`SAMPLE_RATE`. Harmonic waveforms are
read from one-cycle wavetables built once at import (a table lookup costs about one ``np.sin``
and carries any number of harmonics), so a whole 2 s clip renders in a few milliseconds.

A score is a list of :class:`Note` (lead, bass) and :class:`Hit` (drums); :func:`render_notes`
and :func:`render_hits` turn them into stems.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
TABLE_SIZE = 4096
_TWO_PI = np.float32(2 * np.pi)


@dataclass(frozen=True)
class Note:
    """One pitched note of a score.

    Attributes:
        start: onset in seconds.
        length: gate length in seconds (a voice may ring on after it).
        pitch: MIDI pitch (69 = A4 = 440 Hz).
        velocity: loudness in (0, 1].
    """

    start: float
    length: float
    pitch: int
    velocity: float


@dataclass(frozen=True)
class Hit:
    """One drum hit: onset in seconds, a :data:`DRUM_VOICES` name and a velocity in (0, 1]."""

    start: float
    kind: str
    velocity: float


def midi_to_hz(pitch: float) -> float:
    """Equal-tempered frequency of a MIDI pitch (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def harmonic_table(amplitudes: Sequence[float]) -> np.ndarray:
    """One cycle of ``sum_k a_k sin(2 pi k x)``, peak-normalised.

    Args:
        amplitudes: ``a_1, a_2, ...``, the amplitude of harmonic ``k`` (index ``k - 1``).

    Returns:
        ``(TABLE_SIZE,)`` float32 wavetable.
    """
    x = np.arange(TABLE_SIZE) / TABLE_SIZE
    wave = sum(a * np.sin(2 * np.pi * (k + 1) * x) for k, a in enumerate(amplitudes) if a)
    return (wave / np.abs(wave).max()).astype(np.float32)


# Tables stay under the Nyquist limit for the pitches that use them (lead tops out near 1.1 kHz).
_BRIGHT = harmonic_table([1 / k for k in range(1, 8)])  # pluck attack: a 7-harmonic saw
_DARK = harmonic_table([1.0, 0.35, 0.12])  # pluck body after the highs have decayed
_SQUARE = harmonic_table([1.0, 0, 1 / 3, 0, 1 / 5, 0, 1 / 7])  # odd harmonics only
_SOFT_SAW = harmonic_table([np.exp(-(k - 1) / 2.5) / k for k in range(1, 9)])  # low-passed saw
# Drawbars 16', 8', 4', 2 2/3', 2', 1 3/5' as harmonics of the sub-octave: 1, 2, 4, 6, 8, 10.
_ORGAN = harmonic_table([0.5, 1.0, 0, 0.7, 0, 0.5, 0, 0.45, 0, 0.3])
_BASS = harmonic_table([1.0, 0.3, 0.1])  # fundamental-dominant, so the root owns the low spectrum


def oscillator(
    table: np.ndarray, freq: float, n: int, phase: float = 0.0, vibrato: np.ndarray | None = None
) -> np.ndarray:
    """Read ``n`` samples of a wavetable at ``freq`` Hz.

    Args:
        table: ``(TABLE_SIZE,)`` one-cycle wavetable.
        freq: frequency in Hz.
        n: number of samples.
        phase: start phase in cycles.
        vibrato: optional ``(n,)`` pitch deviation in semitones.

    Returns:
        ``(n,)`` float32 signal.
    """
    if vibrato is None:
        cycles = phase + np.arange(n) * (freq / SAMPLE_RATE)
    else:
        cycles = phase + np.cumsum(freq / SAMPLE_RATE * np.exp2(vibrato / 12.0))
    return table[(cycles * TABLE_SIZE).astype(np.int64) & (TABLE_SIZE - 1)]


def gate_envelope(n: int, gate: int, attack: float, sustain: float, release: float) -> np.ndarray:
    """Linear attack to 1, linear fall to ``sustain`` at the gate, linear release to 0.

    Args:
        n: envelope length in samples (``>= gate``).
        gate: note-off sample.
        attack, release: times in seconds.
        sustain: level reached at the gate.

    Returns:
        ``(n,)`` float32 envelope.
    """
    a = max(1, min(int(attack * SAMPLE_RATE), gate))
    xp = [0, a, max(gate, a + 1), max(gate, a + 1) + max(1, int(release * SAMPLE_RATE))]
    return np.interp(np.arange(n), xp, [0.0, 1.0, sustain, 0.0]).astype(np.float32)


def decay(n: int, tau: float, attack: float = 0.002) -> np.ndarray:
    """Exponential decay with time constant ``tau`` seconds after a short linear attack; ``(n,)`` float32."""
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    return (np.exp(-t / tau) * np.minimum(1.0, t / attack)).astype(np.float32)


def _fade_tail(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    m = min(len(x), int(seconds * SAMPLE_RATE))
    x[len(x) - m :] *= np.linspace(1.0, 0.0, m, dtype=np.float32)
    return x


# ---- lead and bass voices: (freq Hz, gate samples, start phase in cycles, rng) -> (n,) float32 --------
Voice = Callable[[float, int, float, np.random.Generator], np.ndarray]


def pluck(freq: float, gate: int, phase: float, rng: np.random.Generator) -> np.ndarray:
    """Plucked string: a bright saw whose highs die in ~45 ms over a darker body ringing ~0.3 s."""
    n = gate + int(0.2 * SAMPLE_RATE)
    out = 0.7 * oscillator(_BRIGHT, freq, n, phase) * decay(n, 0.045, 0.001)
    out += oscillator(_DARK, freq, n, phase) * decay(n, 0.3, 0.001)
    return _fade_tail(out)


def organ(freq: float, gate: int, phase: float, rng: np.random.Generator) -> np.ndarray:
    """Drawbar organ: fixed additive harmonics, instant on/off, a slow Leslie-like tremolo."""
    n = gate + int(0.02 * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    tremolo = 1.0 - 0.12 * (0.5 + 0.5 * np.sin(_TWO_PI * 5.5 * t + rng.random() * 6.0))
    return oscillator(_ORGAN, freq / 2, n, phase / 2) * tremolo * gate_envelope(n, gate, 0.005, 1.0, 0.015)


def square(freq: float, gate: int, phase: float, rng: np.random.Generator) -> np.ndarray:
    """Chiptune square lead: odd harmonics, snappy gate, delayed 5.5 Hz vibrato."""
    n = gate + int(0.02 * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    vibrato = 0.15 * np.sin(_TWO_PI * 5.5 * t) * np.clip((t - 0.15) / 0.1, 0.0, 1.0)
    return oscillator(_SQUARE, freq, n, phase, vibrato) * gate_envelope(n, gate, 0.003, 0.85, 0.015)


def pad(freq: float, gate: int, phase: float, rng: np.random.Generator) -> np.ndarray:
    """Synth pad: three detuned low-passed saws, an 80 ms swell and a 200 ms release."""
    n = gate + int(0.2 * SAMPLE_RATE)
    cents = rng.uniform(6.0, 12.0)
    out = sum(oscillator(_SOFT_SAW, freq * 2 ** (c / 1200), n, phase + rng.random()) for c in (-cents, 0.0, cents))
    # The attack is slow for a pad yet well under a beat, so every beat still swells in and tempo stays audible.
    return out * gate_envelope(n, gate, 0.08, 1.0, 0.2) / 3.0


def bell(freq: float, gate: int, phase: float, rng: np.random.Generator) -> np.ndarray:
    """FM bell: carrier at ``freq``, modulator at 3.5x (inharmonic), decaying index, ~1 s ring."""
    n = gate + int(0.8 * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    index = 2.5 * np.exp(-t / 0.25)
    modulator = index * np.sin(_TWO_PI * np.float32(3.5 * freq) * t)
    carrier = np.sin(_TWO_PI * np.float32(freq) * t + modulator + _TWO_PI * np.float32(phase))
    return _fade_tail(carrier * decay(n, 0.8, 0.001))


def bass(freq: float, gate: int, phase: float, rng: np.random.Generator) -> np.ndarray:
    """Bass: a fundamental-dominant tone with a short gate release."""
    n = gate + int(0.02 * SAMPLE_RATE)
    return oscillator(_BASS, freq, n, phase) * gate_envelope(n, gate, 0.008, 0.75, 0.02)


#: Lead timbre name -> voice; the one place a ``lead`` label maps to sound.
LEAD_VOICES: dict[str, Voice] = {
    "pluck": pluck,
    "organ": organ,
    "square": square,
    "pad": pad,
    "bell": bell,
}


# ---- drums: (rng) -> (n,) float32 one-shot ----------------------------------------------------------
def kick(rng: np.random.Generator) -> np.ndarray:
    """Kick: a sine swept from ~160 Hz down to ~50 Hz (closed-form phase), ~0.2 s decay."""
    n = int(0.35 * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    f_end, f_start, tau = rng.uniform(45, 55), rng.uniform(150, 180), 0.03
    # phase = 2 pi * integral of f(t) = f_end + (f_start - f_end) exp(-t / tau)
    phase = _TWO_PI * (f_end * t + (f_start - f_end) * tau * (1 - np.exp(-t / tau)))
    return np.sin(phase) * decay(n, 0.18, 0.001)


def _bright_noise(n: int, rng: np.random.Generator, order: int) -> np.ndarray:
    """White noise high-passed by ``order`` first differences (each adds +6 dB/octave)."""
    noise = rng.standard_normal(n + order).astype(np.float32)
    noise = np.diff(noise, n=order)
    return noise / np.float32(2.0**order)


def snare(rng: np.random.Generator) -> np.ndarray:
    """Snare: a ~190 Hz tone plus high-passed noise, both decaying fast."""
    n = int(0.25 * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    tone = 0.6 * np.sin(_TWO_PI * np.float32(rng.uniform(180, 200)) * t) * decay(n, 0.05, 0.001)
    return tone + 2.0 * _bright_noise(n, rng, 1) * decay(n, 0.08, 0.001)


def closed_hat(rng: np.random.Generator) -> np.ndarray:
    """Closed hi-hat: doubly high-passed noise, 20 ms decay."""
    n = int(0.08 * SAMPLE_RATE)
    return 1.2 * _bright_noise(n, rng, 2) * decay(n, 0.02, 0.0005)


def open_hat(rng: np.random.Generator) -> np.ndarray:
    """Open hi-hat: doubly high-passed noise, 140 ms decay."""
    n = int(0.35 * SAMPLE_RATE)
    return _fade_tail(1.0 * _bright_noise(n, rng, 2) * decay(n, 0.14, 0.001))


#: Drum hit kind -> one-shot generator.
DRUM_VOICES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "kick": kick,
    "snare": snare,
    "closed_hat": closed_hat,
    "open_hat": open_hat,
}


# ---- scores to stems --------------------------------------------------------------------------------
def add_at(buffer: np.ndarray, signal: np.ndarray, start: int) -> None:
    """Mix ``signal`` into ``buffer`` from sample ``start`` on, cutting whatever runs past either end."""
    start = max(0, start)
    stop = min(len(buffer), start + len(signal))
    if stop > start:
        buffer[start:stop] += signal[: stop - start]


def render_notes(
    notes: Sequence[Note],
    voice: Voice,
    num_samples: int,
    rng: np.random.Generator,
    tuning_cents: float = 0.0,
) -> np.ndarray:
    """Play ``notes`` on ``voice`` into a fresh buffer.

    Args:
        notes: the score.
        voice: e.g. ``LEAD_VOICES["bell"]`` or :func:`bass`.
        num_samples: buffer length ``T``.
        rng: randomness for oscillator phases and voice details.
        tuning_cents: global detune applied to every note.

    Returns:
        ``(T,)`` float32 stem.
    """
    out = np.zeros(num_samples, dtype=np.float32)
    phase = rng.random()  # free-running oscillator: a note's start phase is its frequency times its onset
    for note in notes:
        start = round(note.start * SAMPLE_RATE)
        if start >= num_samples:
            continue
        # Nothing past the buffer end is audible, so the gate never needs to run beyond it.
        gate = max(1, min(int(note.length * SAMPLE_RATE), num_samples - start))
        freq = midi_to_hz(note.pitch + tuning_cents / 100.0)
        add_at(out, note.velocity * voice(freq, gate, (phase + freq * start / SAMPLE_RATE) % 1.0, rng), start)
    return out


def render_hits(hits: Sequence[Hit], num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Play drum ``hits`` (one kick body per clip, fresh noise per other hit) into a ``(T,)`` float32 stem."""
    out = np.zeros(num_samples, dtype=np.float32)
    kick_body = kick(rng)
    for hit in hits:
        sound = kick_body if hit.kind == "kick" else DRUM_VOICES[hit.kind](rng)
        add_at(out, hit.velocity * sound, round(hit.start * SAMPLE_RATE))
    return out
