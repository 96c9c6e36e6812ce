"""Keyword-spotting shards of spoken digits ("zero".."nine"), a small Speech-Commands-like task.

Speakers:
* ``asterisk-en``: the human voice of Debian's ``asterisk-core-sounds-en-wav`` (``digits/0..9``,
  8 kHz), one clip per digit; always in the training split (one speaker cannot fill both);
* espeak-ng speakers: an English voice (en, en-us, en-gb-scotland, ...) with a voice variant
  (``+m3``, ``+f2``, ``+croak``, ...), each saying every digit at several pitches and speeds.

The validation split is speaker-disjoint: a seeded choice of espeak-ng speakers is held out
whole. Each sample stores ``wav`` (8 kHz, 16-bit PCM, mono: the file a recorder would write),
``cls`` (the digit), ``txt`` (the word) and ``json`` (speaker, voice, variant, pitch, speed).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from corefm.data import DataError, ShardWriter

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# The folder asterisk-core-sounds-en-wav itself ships; the `en` link to it comes from the package
# asterisk-core-sounds-en, which apt installs only as a recommendation (setup.sh skips those).
ASTERISK_DIGITS = Path("/usr/share/asterisk/sounds/en_US_f_Allison/digits")
VOICES = ["en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "croak", "klatt",
            "klatt2", "klatt3", "adam", "Alex", "Andy", "Annie", "boris", "david", "ed", "john", "linda",
            "max", "Michael", "paul", "robert", "steph", "travis", "victor", "zac", "norbert", "quincy"]
SAMPLE_RATE = 8000


def _wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """float32 (T,) in [-1, 1] -> 16-bit PCM mono WAV bytes."""
    import io

    from scipy.io import wavfile

    buf = io.BytesIO()
    wavfile.write(buf, rate, np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16))
    return buf.getvalue()


def _read_wav(path: Path) -> np.ndarray:
    """Any PCM WAV -> mono float32 at 8 kHz."""
    import soundfile as sf
    from scipy.signal import resample_poly

    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = math.gcd(rate, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return x


def speakers(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` distinct (voice, variant) pairs, a seeded choice spread over all voices."""
    pairs = [(v, var) for var in VARIANTS for v in VOICES]
    if not 1 <= count <= len(pairs):
        raise DataError(f"--speakers must be in 1..{len(pairs)}, got {count}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    return [pairs[i] for i in order[:count]]


def _speak(voice: str, variant: str, word: str, pitch: int, speed: int, tmp: str) -> np.ndarray:
    out = os.path.join(tmp, f"{voice}-{variant}-{word}-{pitch}-{speed}.wav")
    name = f"{voice}+{variant}" if variant else voice
    result = subprocess.run(["espeak-ng", "-v", name, "-p", str(pitch), "-s", str(speed), "-w", out, word],
                            capture_output=True, text=True)
    if result.returncode or not os.path.isfile(out):
        raise DataError(f"espeak-ng failed for voice {name!r}: {result.stderr.strip() or result.returncode}")
    x = _read_wav(Path(out))
    os.remove(out)
    return x


def _clips(chosen: list[tuple[str, str]], pitches: list[int], speeds: list[int]) -> Iterator[dict]:
    if shutil.which("espeak-ng") is None:
        raise DataError("espeak-ng not found: apt-get install espeak-ng")
    jobs = [(v, var, d, p, s) for v, var in chosen for d in range(10) for p in pitches for s in speeds]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = [pool.submit(_speak, v, var, WORDS[d], p, s, tmp) for v, var, d, p, s in jobs]
        for (v, var, d, p, s), fut in zip(jobs, tqdm(futures, desc="espeak-ng", unit="clip")):
            speaker = f"espeak-{v}" + (f"+{var}" if var else "")
            yield {"wav": _wav_bytes(fut.result()), "cls": d, "txt": WORDS[d],
                   "json": {"speaker": speaker, "voice": v, "variant": var, "pitch": p, "speed": s,
                            "word": WORDS[d], "source": "espeak-ng"}}


def _asterisk(root: Path) -> list[dict]:
    missing = [d for d in range(10) if not (root / f"{d}.wav").is_file()]
    if missing:
        raise DataError(f"Asterisk digits not found ({root}/{missing[0]}.wav): "
                        "apt-get install asterisk-core-sounds-en-wav, or pass --no-asterisk")
    return [{"wav": _wav_bytes(_read_wav(root / f"{d}.wav")), "cls": d, "txt": WORDS[d],
             "json": {"speaker": "asterisk-en", "word": WORDS[d], "source": "asterisk-core-sounds-en-wav"}}
            for d in range(10)]


def _write(samples: list[dict], out_dir: Path, prefix: str, num_shards: int, producer: dict) -> Path:
    if len(samples) < num_shards:
        raise DataError(f"{len(samples)} {prefix} clips cannot fill {num_shards} shards: add speakers")
    order = np.random.default_rng(len(samples)).permutation(len(samples))  # mix speakers across shards
    with ShardWriter(out_dir, prefix=prefix, num_shards=num_shards, producer=producer) as w:
        for i, j in enumerate(order):
            w.write({"__key__": f"{prefix}-{i:07d}", **samples[j]})
    return out_dir


def build(out: Path, num_speakers: int = 48, val_fraction: float = 0.2, pitches: tuple[int, ...] = (35, 50, 65),
          speeds: tuple[int, ...] = (140, 175), asterisk: bool = True, train_shards: int = 8, val_shards: int = 4,
          seed: int = 0) -> dict[str, Path]:
    """Write ``out/train`` and ``out/val`` (speaker-disjoint) keyword-spotting shard sets."""
    chosen = speakers(num_speakers, seed)
    n_val = max(1, round(val_fraction * num_speakers))
    if n_val >= num_speakers:
        raise DataError(f"{num_speakers} speakers leave none for training with val_fraction {val_fraction}")
    held_out = {f"espeak-{v}" + (f"+{var}" if var else "") for v, var in chosen[:n_val]}
    train: list[dict] = _asterisk(ASTERISK_DIGITS) if asterisk else []
    val: list[dict] = []
    for clip in _clips(chosen, list(pitches), list(speeds)):
        (val if clip["json"]["speaker"] in held_out else train).append(clip)
    producer = {"name": "projects.byteformer.speech", "source": "speech-digits", "classes": WORDS,
                "args": {"speakers": num_speakers, "val_speakers": sorted(held_out), "pitches": list(pitches),
                         "speeds": list(speeds), "asterisk": asterisk, "seed": seed, "sample_rate": SAMPLE_RATE}}
    return {"train": _write(train, out / "train", "train", train_shards, producer),
            "val": _write(val, out / "val", "val", val_shards, producer)}
