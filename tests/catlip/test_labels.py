"""CatLIP caption labels on real sentences, against the real WordNet 3.0 files (wordnet-base).

Expected synset ids are WordNet 3.0 offsets, checked by hand in /usr/share/wordnet/data.noun.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from projects.catlip.labels import (
    build_vocabulary,
    caption_synsets,
    count_synsets,
    decode,
    multi_hot,
)
from projects.catlip.wordnet import default_wordnet
from tests.conftest import require_wordnet

DOG, BEACH, CHILD, MOUSE = "n02084071", "n09217230", "n09917593", "n02330245"
BOWL, ICE_CREAM, TSHIRT, ICE = "n02881193", "n07614500", "n03595614", "n14915184"
TABLE_DATA, TABLE_FURNITURE, GLASSES, CAT = "n08266235", "n04379243", "n04272054", "n02121620"
DISH = "n03206908"


@pytest.fixture(scope="module")
def wn():
    require_wordnet()
    return default_wordnet()


def lemmas(wn, ids: list[str]) -> list[str]:
    return [wn.synset(int(s[1:])).lemmas[0] for s in ids]


def test_reader_parses_index_data_and_exceptions(wn):
    dog = wn.synset(int(DOG[1:]))
    assert dog.id == DOG and dog.lemmas == ("dog", "domestic_dog", "Canis_familiaris")
    assert dog.lexname == "noun.animal" and dog.gloss.startswith("a member of the genus Canis")
    # index.noun: seven senses, the animal first, in WordNet's frequency order
    assert len(wn.noun_offsets("dog")) == 7 and wn.noun_offsets("dog")[0] == int(DOG[1:])
    assert wn.morphy_noun("children") == ["child"]  # noun.exc
    assert wn.morphy_noun("boxes") == ["box"]  # xes -> x (the s rule gives "boxe", not a lemma)
    assert wn.morphy_noun("ladies") == ["lady"]  # ies -> y
    assert wn.morphy_noun("glasses")[0] == "glasses"  # a lemma itself stays first
    assert wn.morphy_noun("ice_creams") == ["ice_cream"]  # collocations: rules act on the end
    assert wn.morphy_noun("blorptastic") == []
    with pytest.raises(KeyError):
        wn.synset(int(DOG[1:]) + 1)  # not the start of a line


def test_regular_plurals(wn):
    assert caption_synsets("Two dogs running on the beach.") == [DOG, BEACH]


def test_irregular_plurals_from_noun_exc(wn):
    assert caption_synsets("children feeding mice") == [CHILD, MOUSE]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a bowl of ice cream", [BOWL, ICE_CREAM]),  # not "ice" (n14915184) + "cream"
        ("A bowl of ice-cream", [BOWL, ICE_CREAM]),  # hyphenated spelling of an underscore lemma
        ("ice creams in dishes", [ICE_CREAM, DISH]),  # plural of a collocation
        ("a red t-shirt", [TSHIRT]),  # hyphen kept inside the token; the colour skipped
    ],
)
def test_multi_word_synsets(wn, text, expected):
    got = caption_synsets(text)
    assert got == expected, lemmas(wn, got)
    assert ICE not in got


def test_unknown_and_skipped_words_are_dropped(wn):
    assert caption_synsets("a blorptastic zibble") == []
    # WordNet nouns that are not the content here: "a" (vitamin A), "it", "one", "photo", "image"
    assert caption_synsets("It is a photo of one image") == []
    # verb forms and adjectives whose first noun sense is abstract ("running": noun.act)
    assert caption_synsets("running and swimming in the dark") == []


def test_first_sense_is_taken(wn):
    # "table" has six noun senses; WordNet's first is the tabular array, not the furniture, and
    # CatLIP takes the first sense without disambiguation
    assert wn.noun_offsets("table")[:2] == (int(TABLE_DATA[1:]), int(TABLE_FURNITURE[1:]))
    assert caption_synsets("a cat on the table") == [CAT, TABLE_DATA]
    # a word that is itself a lemma keeps its own first sense ("glasses" = spectacles, not glass)
    assert caption_synsets("a cat's glasses") == [CAT, GLASSES]


def test_concrete_ambiguous_words_are_kept(wn):
    got = caption_synsets("a painting of a building, an orange and a plastic cup")
    assert lemmas(wn, got) == ["painting", "building", "orange", "plastic", "cup"]


def test_each_synset_once_per_caption(wn):
    assert caption_synsets("a dog, another dog and two more dogs") == [DOG]


def test_vocabulary_threshold(wn):
    captions = [
        "a dog on the beach",
        "two dogs on a beach",
        "a dog and a cat",
        "a dog, a dog, a dog",  # counts once: 3 captions with a dog before this one, 4 in all
        "a cat with mice",
    ]
    counts = count_synsets(captions)
    assert counts == Counter({DOG: 4, BEACH: 2, CAT: 2, MOUSE: 1})
    assert build_vocabulary(counts, 1) == sorted([DOG, BEACH, CAT, MOUSE])
    assert build_vocabulary(counts, 2) == sorted([DOG, BEACH, CAT])
    assert build_vocabulary(counts, 3) == [DOG]
    assert build_vocabulary(counts, 5) == []
    with pytest.raises(ValueError):
        build_vocabulary(counts, 0)


def test_multi_hot_round_trip(wn):
    vocab = build_vocabulary(count_synsets(["a dog on the beach", "a cat and a dog", "mice"]), 1)
    assert vocab == sorted(vocab) and len(vocab) == 4
    ids = caption_synsets("a cat on the beach with a blorptastic zibble and a child")
    target = multi_hot(ids, vocab)
    assert target.dtype == np.uint8 and target.shape == (4,)
    assert target.tolist() == [int(s in (CAT, BEACH)) for s in vocab]  # the child is not in vocab
    assert decode(target, vocab) == sorted([CAT, BEACH])
    as_float = multi_hot(ids, {s: k for k, s in enumerate(vocab)}, dtype=np.float32)
    assert as_float.dtype == np.float32 and np.array_equal(as_float, target.astype(np.float32))
    assert multi_hot([], vocab).sum() == 0
