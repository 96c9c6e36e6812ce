"""A small reader of the WordNet 3.0 database files (format: wndb(5), morphy(7WN)).

Reads Debian's ``wordnet-base`` package (``/usr/share/wordnet``), which launch/setup.sh installs.
NLTK is not used: its ``wordnet`` corpus is a separate download that an offline machine cannot
fetch, and the raw files hold everything CatLIP's label extraction needs.

Only what caption labelling uses is read:

* ``index.noun``: lemma -> synset offsets, most frequent sense first (WordNet orders them by
  their SemCor tag counts), so ``offsets[0]`` is the first sense.
* ``data.noun``: one synset per line, and a synset's offset *is* the byte position of its line,
  so a synset is one ``seek`` away; lines are read on demand, never the whole 15 MB file.
* ``noun.exc`` (irregular plurals) and ``verb.exc`` (irregular verb forms such as "running").
* The lemma columns of ``index.verb`` / ``index.adj``, to tell when a word is also a verb form
  or an adjective (labels.py uses that in place of a part-of-speech tagger).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

WORDNET_ROOT = Path("/usr/share/wordnet")

# morphy(7WN)'s detachment rules for nouns, in its order: (suffix, replacement).
NOUN_RULES: tuple[tuple[str, str], ...] = (
    ("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"),
    ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y"),
)
# The same for verbs; only used to recognise "-ing" and "-ed" forms of verbs.
VERB_RULES: tuple[tuple[str, str], ...] = (
    ("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", ""),
)

# Lexicographer file numbers (lexnames(5); Debian's wordnet-base leaves out the ``lexnames`` file,
# but the numbering is fixed by the WordNet 3.0 release).
LEXNAMES: dict[int, str] = {
    3: "noun.Tops", 4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute",
    8: "noun.body", 9: "noun.cognition", 10: "noun.communication", 11: "noun.event",
    12: "noun.feeling", 13: "noun.food", 14: "noun.group", 15: "noun.location", 16: "noun.motive",
    17: "noun.object", 18: "noun.person", 19: "noun.phenomenon", 20: "noun.plant",
    21: "noun.possession", 22: "noun.process", 23: "noun.quantity", 24: "noun.relation",
    25: "noun.shape", 26: "noun.state", 27: "noun.substance", 28: "noun.time",
}


@dataclass(frozen=True)
class Synset:
    """One noun synset of data.noun."""

    offset: int  # byte offset of its line in data.noun; unique among nouns
    lexname: str  # lexicographer file, e.g. "noun.animal"
    lemmas: tuple[str, ...]  # as written in WordNet: underscores for spaces, original case
    gloss: str  # definition and examples, after the "|"

    @property
    def id(self) -> str:
        """Stable string id: POS letter + 8-digit offset, e.g. ``n02084071`` for dog.n.01."""
        return f"n{self.offset:08d}"


def _lines(path: Path):
    """The entry lines of a WordNet file: the license header lines start with two spaces."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  "):
                yield line


class WordNet:
    """Lazy, cached access to one WordNet 3.0 ``dict`` folder. Each file is read at first use."""

    def __init__(self, root: Path | str = WORDNET_ROOT) -> None:
        self.root = Path(root)
        # offset -> Synset; a caption vocabulary touches a few thousand of the 82k noun synsets
        self._synsets: dict[int, Synset] = {}

    def available(self) -> bool:
        """Whether the files this reader needs are there (the package may not be installed)."""
        return all((self.root / n).is_file() for n in ("index.noun", "data.noun", "noun.exc"))

    # -- the files ---------------------------------------------------------------------------
    @functools.cached_property
    def _noun_index(self) -> dict[str, tuple[int, ...]]:
        index: dict[str, tuple[int, ...]] = {}
        for line in _lines(self.root / "index.noun"):
            # lemma pos synset_cnt p_cnt [ptr_symbol]*p_cnt sense_cnt tagsense_cnt offset*synset_cnt
            f = line.split()
            synset_cnt, p_cnt = int(f[2]), int(f[3])
            index[f[0]] = tuple(int(o) for o in f[6 + p_cnt : 6 + p_cnt + synset_cnt])
        return index

    def _exceptions(self, name: str) -> dict[str, tuple[str, ...]]:
        table: dict[str, tuple[str, ...]] = {}
        for line in _lines(self.root / name):
            f = line.split()
            table[f[0]] = tuple(f[1:])
        return table

    @functools.cached_property
    def _noun_exc(self) -> dict[str, tuple[str, ...]]:
        return self._exceptions("noun.exc")

    @functools.cached_property
    def _verb_exc(self) -> dict[str, tuple[str, ...]]:
        return self._exceptions("verb.exc")

    def _lemma_set(self, name: str) -> frozenset[str]:
        path = self.root / name
        if not path.is_file():
            return frozenset()
        return frozenset(line.split(" ", 1)[0] for line in _lines(path))

    @functools.cached_property
    def _verbs(self) -> frozenset[str]:
        return self._lemma_set("index.verb")

    @functools.cached_property
    def _adjectives(self) -> frozenset[str]:
        return self._lemma_set("index.adj")

    # -- lookups -----------------------------------------------------------------------------
    def noun_offsets(self, lemma: str) -> tuple[int, ...]:
        """Synset offsets of an exact noun lemma (lowercase, underscores), first sense first."""
        return self._noun_index.get(lemma, ())

    def is_noun(self, lemma: str) -> bool:
        return lemma in self._noun_index

    def is_adjective(self, lemma: str) -> bool:
        return lemma in self._adjectives

    def synset(self, offset: int) -> Synset:
        """The data.noun synset at ``offset`` (its line starts at that byte); cached per reader."""
        cached = self._synsets.get(offset)
        if cached is not None:
            return cached
        with (self.root / "data.noun").open("rb") as f:
            f.seek(offset)
            line = f.readline().decode("utf-8")
        # offset lex_filenum ss_type w_cnt(hex) [word lex_id(hex)]*w_cnt p_cnt ... | gloss
        head, _, gloss = line.partition(" | ")
        f_ = head.split()
        if int(f_[0]) != offset:
            raise KeyError(f"no noun synset at offset {offset}")
        w_cnt = int(f_[3], 16)
        lemmas = tuple(f_[4 + 2 * i] for i in range(w_cnt))
        lexname = LEXNAMES.get(int(f_[1]), f"lexfile.{f_[1]}")
        self._synsets[offset] = found = Synset(offset, lexname, lemmas, gloss.strip())
        return found

    def synsets(self, lemma: str) -> list[Synset]:
        """Noun synsets of ``lemma`` after morphy, in WordNet's order (first = most frequent)."""
        out: list[Synset] = []
        for base in self.morphy_noun(lemma):
            out.extend(self.synset(o) for o in self.noun_offsets(base) if o not in {s.offset for s in out})
        return out

    def morphy_noun(self, word: str) -> list[str]:
        """Noun lemmas ``word`` may be a form of, best first, as morphy(7WN) finds them.

        Order: the word itself when it is a lemma (so "glasses" stays "glasses", the spectacles),
        then noun.exc ("children" -> "child"), then the detachment rules ("dogs" -> "dog").
        As NLTK's morphy does, the rules are not tried for words noun.exc lists, and as WordNet's
        C morphy does, not for words ending in "ss" or of two letters ("glass" -> "glas", "as").
        Collocations go through the same rules, which then act on the last word
        ("ice_creams" -> "ice_cream").
        """
        word = word.lower()
        candidates = [word]
        if word in self._noun_exc:
            candidates.extend(self._noun_exc[word])
        elif not (word.endswith("ss") or len(word) <= 2):
            candidates.extend(word[: -len(suf)] + rep for suf, rep in NOUN_RULES if word.endswith(suf))
        seen: list[str] = []
        for c in candidates:
            if c and c not in seen and self.is_noun(c):
                seen.append(c)
        return seen

    def is_verb_form(self, word: str) -> bool:
        """Whether ``word`` is an inflected form of a WordNet verb ("running", "parked", "sits")."""
        word = word.lower()
        if word in self._verb_exc:
            return True
        for suf, rep in VERB_RULES:
            if word.endswith(suf):
                stem = word[: -len(suf)]
                if stem + rep in self._verbs:
                    return True
                # doubled final consonant ("stopped" -> "stop") that verb.exc does not list
                if rep == "" and len(stem) > 2 and stem[-1] == stem[-2] and stem[:-1] in self._verbs:
                    return True
        return False


@functools.cache
def default_wordnet() -> WordNet:
    """The process-wide reader of the installed WordNet (files read once, at first use)."""
    return WordNet()
