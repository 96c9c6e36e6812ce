"""A small real instruction set from WordNet 3.0: ``corefm openelm instruct-data``.

Reads Debian's ``wordnet-base`` files (``/usr/share/wordnet``, format wndb(5)) directly:

* ``index.{noun,verb,adj,adv}``: one line per lemma, ``lemma pos synset_cnt p_cnt [ptr]*p_cnt
  sense_cnt tagsense_cnt offset*synset_cnt``, the offsets ordered most frequent sense first;
* ``data.{noun,verb,adj,adv}``: one synset per line, found by seeking to its offset; the lemmas are
  the ``word lex_id`` pairs after the hexadecimal ``w_cnt``, the gloss follows ``" | "`` and is a
  definition followed by double-quoted examples.

Every lemma (a word and a part of speech) gives up to three single-turn conversations:

* ``What does the noun "bank" mean?`` -> the first sense's definition;
* ``Use the noun "bank" in a sentence.`` -> the first quoted example, over the senses in order, that
  contains the word (or a plain inflection of it);
* ``Give a synonym of the noun "bank".`` -> the other lemmas of the first sense (comma-separated), when it has any.

The split is by word (the lemma string, whatever its part of speech): the ``--val-words`` words
with the smallest sha256 of their text are held out, so no word of the validation set, in any of
its senses or question kinds, is seen in training, and the split does not depend on file order.
Output: ``OUT/train.jsonl``, ``OUT/val.jsonl`` (``{"messages": [...], "word", "pos", "kind"}`` per
line, sorted by word) and ``OUT/dataset.json`` with the counts; files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from corefm.data import DataError

VERSION = "1"
WORDNET_ROOT = Path("/usr/share/wordnet")
POS_FILES = {"noun": "noun", "verb": "verb", "adjective": "adj", "adverb": "adv"}
KINDS = ("definition", "example", "synonym")
_QUOTED = re.compile(r'"([^"]+)"')
_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")  # data.adj's syntactic markers: outback(a), galore(ip)


@dataclass(frozen=True)
class Sense:
    lemmas: tuple[str, ...]  # as in the synset, with spaces for underscores, markers removed
    definition: str
    examples: tuple[str, ...]


def _entries(path: Path):
    """The entry lines of a WordNet file (its licence header lines start with two spaces)."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  ") and line.strip():
                yield line


def parse_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """``definition; "example"; "example"`` -> (definition, examples)."""
    gloss = gloss.strip()
    examples = tuple(e.strip() for e in _QUOTED.findall(gloss) if e.strip())
    cut = gloss.find('"')
    definition = (gloss if cut < 0 else gloss[:cut]).strip().rstrip(";").strip()
    return definition, examples


def lemma_text(raw: str) -> str:
    return _ADJ_MARKER.sub("", raw).replace("_", " ")


class WordNetFiles:
    """Lemmas and senses of one WordNet dict folder (all four parts of speech)."""

    def __init__(self, root: str | Path = WORDNET_ROOT) -> None:
        self.root = Path(root)
        missing = [f"{kind}.{suffix}" for suffix in POS_FILES.values() for kind in ("index", "data")
                   if not (self.root / f"{kind}.{suffix}").is_file()]
        if missing:
            raise DataError(f"--wordnet {self.root}: not a WordNet 3.0 dict folder (missing "
                            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}; Debian's "
                            "wordnet-base installs /usr/share/wordnet)")

    def index(self, pos: str) -> dict[str, tuple[int, ...]]:
        """lemma (as written in the index, lowercase with underscores) -> synset offsets, first sense first."""
        out: dict[str, tuple[int, ...]] = {}
        path = self.root / f"index.{POS_FILES[pos]}"
        for n, line in enumerate(_entries(path)):
            f = line.split()
            try:
                synset_cnt, p_cnt = int(f[2]), int(f[3])
                offsets = tuple(int(o) for o in f[6 + p_cnt: 6 + p_cnt + synset_cnt])
            except (IndexError, ValueError):
                raise DataError(f"{path}: entry {n + 1} is not in wndb(5) index format: {line[:80]!r}") from None
            if len(offsets) != synset_cnt:
                raise DataError(f"{path}: entry {f[0]!r} lists {len(offsets)} of its {synset_cnt} synsets")
            out[f[0]] = offsets
        return out

    def senses(self, pos: str, offsets: set[int]) -> dict[int, Sense]:
        """The synsets at these offsets of data.<pos> (one seek each: an offset is its line's byte position)."""
        path = self.root / f"data.{POS_FILES[pos]}"
        out: dict[int, Sense] = {}
        with path.open("rb") as f:
            for offset in sorted(offsets):
                f.seek(offset)
                line = f.readline().decode("utf-8")
                head, sep, gloss = line.partition(" | ")
                fields = head.split()
                if not sep or len(fields) < 4 or not fields[0].isdigit() or int(fields[0]) != offset:
                    raise DataError(f"{path}: no synset at byte offset {offset} (files of different releases?)")
                w_cnt = int(fields[3], 16)
                lemmas = tuple(lemma_text(fields[4 + 2 * i]) for i in range(w_cnt))
                definition, examples = parse_gloss(gloss)
                out[offset] = Sense(lemmas, definition, examples)
        return out


def sentence_case(text: str) -> str:
    """Capitalised, ending with a full stop (WordNet's definitions are lowercase fragments)."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def mentions(sentence: str, word: str) -> bool:
    """Whether the sentence uses the word, or a plain inflection of it (s, es, d, ed, ing)."""
    return re.search(r"(?<![\w-])" + re.escape(word) + r"(s|es|d|ed|ing)?(?![\w-])", sentence, re.IGNORECASE) is not None


def conversations(word: str, pos: str, senses: list[Sense]) -> list[dict]:
    """The examples one lemma gives (see the module docstring); senses most frequent first."""
    first = senses[0]
    out = []

    def add(kind: str, question: str, answer: str) -> None:
        out.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                    "word": word, "pos": pos, "kind": kind})

    if first.definition:
        add("definition", f'What does the {pos} "{word}" mean?', sentence_case(first.definition))
    example = next((e for s in senses for e in s.examples if mentions(e, word)), None)
    if example is not None:
        add("example", f'Use the {pos} "{word}" in a sentence.', sentence_case(example))
    synonyms = [lemma for lemma in first.lemmas if lemma.lower() != word.lower()]
    if synonyms:
        add("synonym", f'Give a synonym of the {pos} "{word}".', ", ".join(dict.fromkeys(synonyms)))
    return out


def word_key(word: str) -> str:
    return hashlib.sha256(word.encode("utf-8")).hexdigest()


def build_examples(root: str | Path = WORDNET_ROOT) -> list[dict]:
    """Every lemma's conversations, sorted by (word, part of speech, kind)."""
    wn = WordNetFiles(root)
    examples: list[dict] = []
    for pos in POS_FILES:
        index = wn.index(pos)
        senses = wn.senses(pos, {o for offsets in index.values() for o in offsets})
        for raw, offsets in index.items():
            found = [senses[o] for o in offsets]
            word = lemma_text(raw)
            # the index is lowercase; the synsets keep the case ("thailand" -> "Thailand")
            word = next((lemma for lemma in found[0].lemmas if lemma.lower() == word), word)
            examples.extend(conversations(word, pos, found))
    order = {k: i for i, k in enumerate(KINDS)}
    examples.sort(key=lambda e: (e["word"], e["pos"], order[e["kind"]]))
    return examples


def split_by_word(examples: list[dict], val_words: int, max_words: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, val): val holds every example of the ``val_words`` words with the smallest sha256; with
    ``max_words`` only that many words (the next ones in the same order) are kept for training."""
    words = sorted({e["word"] for e in examples}, key=word_key)
    if val_words < 0 or max_words < 0:
        raise DataError("--val-words and --max-words must be >= 0")
    if val_words >= len(words):
        raise DataError(f"WordNet gave {len(words)} words: cannot hold out {val_words}")
    held = set(words[:val_words])
    kept = set(words[val_words: val_words + max_words] if max_words else words[val_words:])
    return [e for e in examples if e["word"] in kept], [e for e in examples if e["word"] in held]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_instruct_data(root: str | Path, out: str | Path, val_words: int = 500, max_words: int = 0) -> dict:
    """Write OUT/train.jsonl, OUT/val.jsonl and OUT/dataset.json; returns the manifest."""
    out = Path(out)
    examples = build_examples(root)
    train, val = split_by_word(examples, val_words, max_words)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rows in (("train", train), ("val", val)):
        _write_atomic(out / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        counts[name] = {"examples": len(rows), "words": len({r["word"] for r in rows}),
                        "kinds": {k: sum(r["kind"] == k for r in rows) for k in KINDS}}
    manifest = {"producer": {"name": "projects.openelm.instruct.wordnet", "version": VERSION,
                             "wordnet": str(Path(root).resolve()), "val_words": val_words, "max_words": max_words,
                             "split": "by word: the val_words words with the smallest sha256(word) are held out"},
                "splits": counts}
    _write_atomic(out / "dataset.json", json.dumps(manifest, indent=2) + "\n")
    return manifest
