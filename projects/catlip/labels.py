"""Captions -> WordNet noun synsets -> multi-hot targets, the label side of CatLIP.

CatLIP (Mehta et al., arXiv 2404.15653) turns image-text pretraining into multi-label
classification: the nouns of each caption are mapped to WordNet synsets, synsets seen at least
``min_count`` times form the label vocabulary, and the image tower learns a binary cross-entropy
over that vocabulary. As in the paper, every noun takes its FIRST (most frequent) WordNet sense:
there is no word-sense disambiguation.

The paper finds nouns with a part-of-speech tagger; this module has none (NLTK's tagger models
cannot be installed offline). Instead:

* a stop list (``SKIP``) removes words WordNet happens to list as nouns that in a caption are
  nearly always something else (articles, pronouns, numbers, colours, sizes) or say nothing
  about the content ("image", "photo", ...);
* a word that is also a verb form ("running", "sitting") or an adjective ("red", "dark") counts
  as a noun only when its first noun sense is a concrete thing (``CONCRETE``): "building",
  "painting", "clothing", "orange", "plastic" are kept; "running" (noun.act), "red"
  (noun.attribute) are dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from projects.catlip.wordnet import WordNet, default_wordnet

# Words, hyphens and apostrophes kept inside them: "t-shirt", "dog's", "rock'n'roll".
TOKEN = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")
# Longest collocation tried first; WordNet has longer ones, but captions rarely need them.
MAX_NGRAM = 3

# Why each group is skipped: WordNet lists all of these as nouns, but in a caption they are
# (almost) never the noun naming something in the image, and they occur in so many captions that
# they would become frequent, meaningless classes.
SKIP: frozenset[str] = frozenset(
    # articles, pronouns, prepositions, auxiliaries: "a" (vitamin A), "i" (iodine), "it"
    # (information technology), "in" (inch / Indiana), "are" (unit of area), "us", "ma", "do"
    "a an the i me my it its he him his she her we us our you your they them their this that these "
    "those there here who what which one ones in on at by of to as or and be are is was am do does "
    "no not so up out off over under near next all each any some more most other such own "
    # numbers: "two" is the number 2 as a noun, and counts are not what the image shows
    "zero two three four five six seven eight nine ten eleven twelve dozen hundred thousand "
    "first second third half several many few "
    # colours and sizes: adjectives in captions ("a red t-shirt"); kept out even where their first
    # noun sense is concrete ("small" = small of the back, "young" = offspring)
    "red blue green yellow black white brown gray grey pink purple small little large "
    "big young old new tall short long dark light "
    # words about the picture, not its content; generic placement and quantity words
    "image images photo photos photograph picture pictures pic shot view close-up closeup "
    "background foreground front top bottom side left right middle center centre "
    "thing things something lot lots kind type part piece couple pair group bunch "
    "way time day".split()
)

# Lexicographer files of concrete, depictable nouns: an ambiguous word (also a verb form or an
# adjective) is taken as a noun only if its first sense lies in one of these.
CONCRETE: frozenset[str] = frozenset(
    "noun.animal noun.artifact noun.body noun.food noun.location noun.object noun.person "
    "noun.plant noun.substance".split()
)


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens; possessive "'s" / trailing "'" removed ("dog's bowl" -> dog, bowl)."""
    out = []
    for tok in TOKEN.findall(text.lower()):
        out.append(tok.removesuffix("'s"))
    return out


def _first_synset(wn: WordNet, form: str) -> int | None:
    """Offset of the first sense of the first morphy lemma of ``form``, or None.

    A hyphenated form is also tried with underscores, as WordNet writes some compounds one way
    and some the other ("t-shirt" but "ice_cream"; a caption may say "ice-cream").
    """
    variants = [form] + ([form.replace("-", "_")] if "-" in form else [])
    for v in variants:
        for base in wn.morphy_noun(v):
            offsets = wn.noun_offsets(base)
            if offsets:
                return offsets[0]
    return None


def _is_noun_here(wn: WordNet, word: str, offset: int) -> bool:
    """Stand-in for a POS tagger: an ambiguous word is a noun only if its first sense is concrete."""
    # Only "-ing"/"-ed" verb forms count: "-s" forms would catch every plural ("dogs" = to dog).
    verb_form = word.endswith(("ing", "ed")) and wn.is_verb_form(word)
    if verb_form or wn.is_adjective(word):
        return wn.synset(offset).lexname in CONCRETE
    return True


def caption_offsets(text: str, wn: WordNet | None = None) -> list[int]:
    """Noun synset offsets of a caption, in caption order, each once."""
    wn = wn or default_wordnet()
    tokens = tokenize(text)
    found: list[int] = []
    i = 0
    while i < len(tokens):
        hit: tuple[int, int] | None = None  # (offset, tokens used)
        # Longest multi-word lemma first ("ice cream" before "ice"), never starting or ending on a
        # skipped word, so "a bowl" or "bowl of" cannot form one.
        for n in range(min(MAX_NGRAM, len(tokens) - i), 1, -1):
            words = tokens[i : i + n]
            if words[0] in SKIP or words[-1] in SKIP:
                continue
            offset = _first_synset(wn, "_".join(words))
            # An idiom spanning a function word ("cup of tea" = something one likes, noun.act)
            # must name a concrete thing, else its words are read one by one ("cup", "tea").
            if offset is not None and any(w in SKIP for w in words[1:-1]):
                if wn.synset(offset).lexname not in CONCRETE:
                    offset = None
            if offset is not None:
                hit = (offset, n)
                break
        if hit is None:
            word = tokens[i]
            if word not in SKIP:
                offset = _first_synset(wn, word)
                if offset is not None and _is_noun_here(wn, word, offset):
                    # "photos" is skipped like "photo": check the base form against the list too
                    if not any(b in SKIP for b in wn.morphy_noun(word)[:1]):
                        hit = (offset, 1)
        if hit is None:
            i += 1
            continue
        if hit[0] not in found:
            found.append(hit[0])
        i += hit[1]
    return found


def synset_id(offset: int) -> str:
    """Stable id of a noun synset: ``n`` + 8-digit data.noun offset (e.g. ``n02084071``, dog)."""
    return f"n{offset:08d}"


def caption_synsets(text: str, wn: WordNet | None = None) -> list[str]:
    """Synset ids of the nouns in a caption, in caption order, each once."""
    return [synset_id(o) for o in caption_offsets(text, wn)]


def count_synsets(captions: Iterable[str], wn: WordNet | None = None) -> Counter[str]:
    """How many captions name each synset (a synset counts once per caption, however often said)."""
    counts: Counter[str] = Counter()
    for text in captions:
        counts.update(caption_synsets(text, wn))
    return counts


def build_vocabulary(counts: Mapping[str, int], min_count: int) -> list[str]:
    """Synset ids seen at least ``min_count`` times, sorted, so the class index of an id does not
    depend on the order the captions were read in."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    return sorted(s for s, c in counts.items() if c >= min_count)


def multi_hot(
    ids: Iterable[str], vocab: Sequence[str] | Mapping[str, int], dtype: np.dtype | type = np.uint8
) -> np.ndarray:
    """Multi-hot target of length ``len(vocab)``; ids outside the vocabulary (rare synsets) are
    dropped. ``vocab`` may be the sorted list or a prebuilt ``{id: index}`` map (faster in a loop)."""
    index = vocab if isinstance(vocab, Mapping) else {s: k for k, s in enumerate(vocab)}
    out = np.zeros(len(index), dtype=dtype)
    for s in ids:
        k = index.get(s)
        if k is not None:
            out[k] = 1
    return out


def decode(target: np.ndarray, vocab: Sequence[str]) -> list[str]:
    """The synset ids a multi-hot target marks, in vocabulary order (inverse of ``multi_hot``)."""
    return [vocab[k] for k in np.flatnonzero(np.asarray(target) > 0)]
