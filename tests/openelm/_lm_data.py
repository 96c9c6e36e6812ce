"""Small real text corpora and a SentencePiece tokenizer trained on them, for the LM data/training tests.

The corpus is generated from a tiny grammar (names, verbs, objects, a few fixed phrases), so a
4-layer model learns it visibly in a few dozen steps while a unigram model cannot.
"""

from __future__ import annotations

import random
from pathlib import Path

NAMES = ["Romeo", "Juliet", "Hamlet", "Ophelia", "Lear", "Cordelia", "Macbeth", "Banquo", "Portia", "Viola"]
VERBS = ["loves", "fears", "follows", "betrays", "forgives", "calls", "seeks", "answers"]
OBJECTS = ["the king", "the queen", "a ghost", "the fool", "his sword", "her letter", "the storm", "a crown"]
ENDINGS = ["in the night.", "at the gate.", "with a heavy heart.", "and says nothing.", "before the dawn."]


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(NAMES)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}"


def documents(n: int, seed: int = 0, sentences: tuple[int, int] = (3, 12)) -> list[str]:
    """n documents of a few sentences each, one sentence per line."""
    rng = random.Random(seed)
    return ["\n".join(sentence(rng) for _ in range(rng.randint(*sentences))) for _ in range(n)]


def write_text_files(folder: Path, docs: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, doc in enumerate(docs):
        paths.append(folder / f"doc_{i:03d}.txt")
        paths[-1].write_text(doc)
    return paths


def train_tokenizer(folder: Path, vocab_size: int = 300) -> Path:
    from projects.openelm.tokenizer import train_sentencepiece

    corpus = folder / "corpus.txt"
    folder.mkdir(parents=True, exist_ok=True)
    corpus.write_text("\n".join(documents(300, seed=123)))
    return train_sentencepiece([corpus], vocab_size, folder / "tok")
