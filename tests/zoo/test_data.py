from __future__ import annotations

import json

from actlang.zoo.data import (
    A_NOUNS,
    A_VERBS,
    ABILITIES,
    DataConfig,
    language_b_words,
    make_abilities,
    number_words,
    read_jsonl,
    shifted_arithmetic_train,
    vocabulary,
    word_salad,
    write_corpora,
)

CFG = DataConfig(lang_train=800, lang_probe=64, lang_eval=64, facts_keys=32)


def test_deterministic_from_seed():
    assert make_abilities(CFG, 3) == make_abilities(CFG, 3)
    a, b = make_abilities(CFG, 3), make_abilities(CFG, 4)
    assert a["lang_a"].train != b["lang_a"].train
    assert a["arithmetic"].eval != b["arithmetic"].eval


def test_sizes_and_fields():
    ab = make_abilities(CFG, 0)
    assert set(ab) == set(ABILITIES)
    assert len(ab["lang_a"].train) == 800 and len(ab["lang_a"].eval) == 64
    assert len(ab["arithmetic"].train) + 100 + 150 == 1000
    for a in ab.values():
        for r in a.probe + a.eval:
            assert set(r) == {"q", "a", "text"}
            assert r["text"] == f"{r['q']} {r['a']}"
            assert r["a"].split()[-1] in {".", "!"}


def test_splits_disjoint():
    ab = make_abilities(CFG, 0)
    for name in ("lang_a", "lang_b", "arithmetic"):
        a = ab[name]
        train = set(a.train)
        probe = {r["text"] for r in a.probe}
        ev = {r["text"] for r in a.eval}
        assert not probe & ev, name
        assert not (probe | ev) & train, name
        # not even the prompt of a held-out item is a prefix of a train sentence
        prompts = {r["q"] for r in a.probe + a.eval}
        assert not any(t.startswith(p + " ") for t in a.train for p in prompts), name
    facts = ab["facts"]
    pk = {r["q"].split()[0] for r in facts.probe}
    ek = {r["q"].split()[0] for r in facts.eval}
    assert not pk & ek and len(pk) == len(ek) == CFG.facts_keys // 4


def test_facts_known_keys_are_never_asked():
    """The parent learns the known half of the facts; probe and eval ask about the others."""
    facts = make_abilities(CFG, 0)["facts"]
    known = {t.split()[0] for t in facts.meta["known"]}
    asked = {r["q"].split()[0] for r in facts.probe + facts.eval}
    assert not known & asked
    assert known | asked == {t.split()[0] for t in facts.train}
    assert set(facts.meta["known"]) <= set(facts.train)


def test_translate_splits_the_word_pairs():
    """The parent's known translations and the specialist's new ones share no word; every
    new pair is trained both ways, and probe and eval are disjoint halves of those."""
    translate = make_abilities(CFG, 0)["translate"]
    known = translate.meta["known"]

    def words(texts):
        return {w for t in texts for w in t.split() if w not in {";", "ze", "!", "."}}

    assert not words(known) & words(translate.train)
    assert len(known) == len(translate.train) == 34  # 17 pairs, both ways
    probe = {r["text"] for r in translate.probe}
    ev = {r["text"] for r in translate.eval}
    assert not probe & ev and probe | ev == set(translate.train)
    b_words = language_b_words()
    for text in translate.train:
        first, *_, answer, end = text.split()
        assert (first in b_words) != (answer in b_words)  # one word of each language
        assert end == ("." if first in b_words else "!")  # answered in the asked language


def test_word_salad_uses_every_word():
    salad = word_salad(CFG, 0)
    assert {w for s in salad for w in s.split()} == set(vocabulary(CFG, 0))
    assert word_salad(CFG, 0) == salad


def test_held_out_meanings_never_in_train_even_simple():
    ab = make_abilities(CFG, 0)
    train = set(ab["lang_a"].train)
    for r in ab["lang_a"].eval:
        first_clause = r["q"].split(" , and ")[0] + " ."
        assert first_clause not in train


def test_languages_share_no_word():
    words_b = language_b_words()
    ab = make_abilities(CFG, 0)
    for name in ("lang_a", "arithmetic", "facts"):
        for t in ab[name].train:
            assert not set(t.split()) & words_b
    for t in ab["lang_b"].train:
        assert set(t.split()) <= words_b


def test_agreement_in_language_a():
    ab = make_abilities(CFG, 0)
    singular = {sg for sg, _ in A_NOUNS}
    plural = {pl for _, pl in A_NOUNS}
    verb_sg = {sg for sg, _ in A_VERBS}
    verb_pl = {pl for _, pl in A_VERBS}
    for t in ab["lang_a"].train:
        words = t.split()
        for i, w in enumerate(words):
            if w in verb_sg | verb_pl:
                subj = words[i - 1]
                assert (subj in singular) == (w in verb_sg), t
                assert (subj in plural) == (w in verb_pl), t


def test_arithmetic_answers_are_sums():
    ab = make_abilities(CFG, 0)
    units = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for r in ab["arithmetic"].eval:
        digits = [units.index(w) for w in r["q"].split() if w in units]
        assert len(digits) == 3
        assert r["a"] == number_words(sum(digits)) + " ."
    shifted = shifted_arithmetic_train(ab["arithmetic"])
    assert len(shifted) == len(ab["arithmetic"].train)
    assert all(s != t for s, t in zip(shifted, ab["arithmetic"].train))


def test_vocabulary_covers_corpora():
    ab = make_abilities(CFG, 0)
    vocab = set(vocabulary(CFG, 0))
    for a in ab.values():
        for t in a.train + tuple(r["text"] for r in a.probe + a.eval):
            assert set(t.split()) <= vocab


def test_write_corpora(tmp_path):
    ab = make_abilities(CFG, 0)
    paths = write_corpora(ab, tmp_path / "data")
    assert read_jsonl(tmp_path / paths["arithmetic"]["eval"]) == list(ab["arithmetic"].eval)
    train = read_jsonl(tmp_path / paths["lang_a"]["train"])
    assert [r["text"] for r in train] == list(ab["lang_a"].train)
    txt = (tmp_path / paths["lang_b"]["train_txt"]).read_text().splitlines()
    assert txt == list(ab["lang_b"].train)
    json.dumps(paths)
