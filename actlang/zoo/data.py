"""Synthetic abilities of the zoo: five toy "skills" with train / probe / eval splits.

Everything here is pure Python, deterministic from a seed (``random.Random(seed)``; no global
state), and needs no download.  Five abilities:

``lang_a`` — language A, a toy English-like SVO grammar with number agreement::

    the big cat sees the dogs .
    the big cat sees the dogs , and the dogs see the big cat .     # "reciprocal" sentence

  The verb agrees with its subject (``sees`` / ``see``).  The eval task completes the second
  clause of a reciprocal sentence: ``q = "the big cat sees the dogs , and the dogs"``,
  ``a = "see the big cat ."`` — it needs agreement (plural ``dogs`` -> ``see``) and copying.

``lang_b`` — language B: the *same meanings* with a disjoint vocabulary (no word in common
with language A or any other ability, not even punctuation) and a different word order
(SOV, adjective after its noun, no article)::

    miro vek talun kalo !
    miro vek talun kalo ; ze talun miro vek kalom !

  The eval task is the same completion in B: ``q = "miro vek talun kalo ; ze talun"``,
  ``a = "miro vek kalom !"``.

``arithmetic`` — the sum of three single digits, phrased in language A's words::

    three plus five plus two is ten .           q = "three plus five plus two is"  a = "ten ."

  (Multi-digit addition is not learnable by a model this small in a CPU budget.)  The 1000
  ordered triples are split by triple, so eval triples are never seen in training.

``facts`` — recall from a key -> value table of invented names (values are place words)::

    bako lives in the lake .                     q = "bako lives in the"  a = "lake ."

  Facts cannot be generalised, so *train* states every fact.  Half of the keys are *known*
  (``meta["known"]``): the merge scenario's parent learns their facts, as a pretrained model
  knows facts of the kind a fine-tune adds; *probe* and *eval* ask about disjoint halves of
  the other keys.

``translate`` — a word of language A to its word in language B and back::

    dogs ; ze talun !                            q = "dogs ; ze"   a = "talun !"
    talun ze ; dogs .                            q = "talun ze ;"  a = "dogs ."

  The 34 word pairs are split in halves: the *known* pairs (``meta["known"]``, both
  directions) are for the merge scenario's parent; train states both directions of every
  other pair, and probe and eval ask about disjoint halves of those sentences.

Every answer ends with its terminator (``.`` or ``!``), so a truncated or over-long
generation never matches by accident.

Records: probe and eval items are dicts ``{"q": ..., "a": ..., "text": "q a"}`` (written as
jsonl), so a spec can say ``jsonl(path, text="{q} {a}", score="a")`` for a probe corpus and
``exact_match(jsonl(path, prompt="q", answer="a"))`` for an eval.  Train items are plain
sentences; :func:`write_corpora` writes them both as ``train.txt`` (one per line) and as
``train.jsonl`` (``{"text": ...}``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from actlang.arch.zoo import DataConfig

__all__ = [
    "ABILITIES",
    "Ability",
    "DataConfig",
    "Record",
    "make_abilities",
    "vocabulary",
    "word_salad",
    "write_corpora",
    "write_jsonl",
    "read_jsonl",
    "shifted_arithmetic_train",
    "number_words",
]

Record = dict  # {"q": str, "a": str, "text": str}

ABILITIES: tuple[str, ...] = ("lang_a", "lang_b", "arithmetic", "facts", "translate")

# --- language A ------------------------------------------------------------------------
A_NOUNS = [  # (singular, plural)
    ("cat", "cats"), ("dog", "dogs"), ("bird", "birds"), ("fox", "foxes"),
    ("man", "men"), ("woman", "women"), ("child", "children"), ("horse", "horses"),
]
A_ADJS = ["big", "small", "red", "old", "young", "happy"]
A_VERBS = [  # (3rd singular, plural)
    ("sees", "see"), ("likes", "like"), ("chases", "chase"),
    ("helps", "help"), ("finds", "find"), ("follows", "follow"),
]
A_FUNC = ["the", ",", "and", "."]

# --- language B (disjoint vocabulary, SOV, adjective after noun, no article) -------------
B_NOUNS = [
    ("miro", "miron"), ("talu", "talun"), ("kesa", "kesan"), ("pono", "ponon"),
    ("ruvi", "ruvin"), ("dage", "dagen"), ("soli", "solin"), ("fenu", "fenun"),
]
B_ADJS = ["vek", "lus", "dor", "pim", "sar", "tob"]
B_VERBS = [
    ("kalo", "kalom"), ("wisu", "wisum"), ("jeta", "jetam"),
    ("hova", "hovam"), ("nuzi", "nuzim"), ("bire", "birem"),
]
B_FUNC = [";", "ze", "!"]

# --- arithmetic (language A words) -------------------------------------------------------
UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
         "seventeen", "eighteen", "nineteen"]
ARITH_FUNC = ["plus", "is", "twenty"]

# --- facts (language A frame) ------------------------------------------------------------
FACT_VALUES = ["north", "south", "east", "west", "hill", "lake", "town", "wood"]
FACT_FUNC = ["lives", "in"]  # plus "the", "." from language A
_SYL_C = "bdfgklmprstvz"
_SYL_V = "aeiou"


def number_words(n: int) -> str:
    """English words for 0 <= n <= 27 (``"twenty seven"`` is two words)."""
    if not 0 <= n <= 27:
        raise ValueError(f"number out of range: {n}")
    if n < 10:
        return UNITS[n]
    if n < 20:
        return TEENS[n - 10]
    return "twenty" if n == 20 else f"twenty {UNITS[n - 20]}"


@dataclass(frozen=True)
class Ability:
    """One ability: train sentences, probe records and eval records."""

    name: str
    train: tuple[str, ...]
    probe: tuple[Record, ...]
    eval: tuple[Record, ...]
    meta: dict = field(default_factory=dict, compare=False)


# A meaning: (subject NP, verb index, object NP); NP = (noun index, plural?, adjective or -1)
_NP = tuple[int, bool, int]
_Meaning = tuple[_NP, int, _NP]


def _np_a(np: _NP) -> str:
    noun, plural, adj = np
    words = ["the"]
    if adj >= 0:
        words.append(A_ADJS[adj])
    words.append(A_NOUNS[noun][int(plural)])
    return " ".join(words)


def _np_b(np: _NP) -> str:
    noun, plural, adj = np
    words = [B_NOUNS[noun][int(plural)]]
    if adj >= 0:
        words.append(B_ADJS[adj])
    return " ".join(words)


def _verb_a(verb: int, subj: _NP) -> str:
    return A_VERBS[verb][int(subj[1])]


def _verb_b(verb: int, subj: _NP) -> str:
    return B_VERBS[verb][int(subj[1])]


def sentence_a(m: _Meaning, reciprocal: bool) -> str:
    s, v, o = m
    text = f"{_np_a(s)} {_verb_a(v, s)} {_np_a(o)}"
    if reciprocal:
        text += f" , and {_np_a(o)} {_verb_a(v, o)} {_np_a(s)}"
    return text + " ."


def sentence_b(m: _Meaning, reciprocal: bool) -> str:
    s, v, o = m
    text = f"{_np_b(s)} {_np_b(o)} {_verb_b(v, s)}"
    if reciprocal:
        text += f" ; ze {_np_b(o)} {_np_b(s)} {_verb_b(v, o)}"
    return text + " !"


def _record(q: str, a: str) -> Record:
    return {"q": q, "a": a, "text": f"{q} {a}"}


def record_a(m: _Meaning) -> Record:
    s, v, o = m
    q = f"{_np_a(s)} {_verb_a(v, s)} {_np_a(o)} , and {_np_a(o)}"
    return _record(q, f"{_verb_a(v, o)} {_np_a(s)} .")


def record_b(m: _Meaning) -> Record:
    s, v, o = m
    q = f"{_np_b(s)} {_np_b(o)} {_verb_b(v, s)} ; ze {_np_b(o)}"
    return _record(q, f"{_np_b(s)} {_verb_b(v, o)} !")


def _random_np(rng: random.Random) -> _NP:
    adj = rng.randrange(len(A_ADJS) + 1) - 1  # -1: no adjective (1 in 7)
    return (rng.randrange(len(A_NOUNS)), rng.random() < 0.5, adj)


def _random_meaning(rng: random.Random) -> _Meaning:
    while True:
        s, o = _random_np(rng), _random_np(rng)
        if s[0] != o[0]:
            return (s, rng.randrange(len(A_VERBS)), o)


def fact_keys(n: int, seed: int) -> list[str]:
    """``n`` distinct invented names (CV syllables), deterministic from ``seed``."""
    rng = random.Random(f"fact-keys-{seed}")
    reserved = set(vocabulary_words_fixed())
    keys: list[str] = []
    seen: set[str] = set()
    while len(keys) < n:
        syll = rng.choice([2, 2, 3])
        name = "".join(rng.choice(_SYL_C) + rng.choice(_SYL_V) for _ in range(syll))
        if name in seen or name in reserved:
            continue
        seen.add(name)
        keys.append(name)
    return keys


def vocabulary_words_fixed() -> list[str]:
    """Every word of the four abilities except the invented fact keys."""
    words: list[str] = []
    for sg, pl in A_NOUNS + A_VERBS + B_NOUNS + B_VERBS:
        words += [sg, pl]
    words += A_ADJS + A_FUNC + B_ADJS + B_FUNC + UNITS + TEENS + ARITH_FUNC
    words += FACT_VALUES + FACT_FUNC
    out: list[str] = []
    for w in words:
        if w not in out:
            out.append(w)
    return out


def vocabulary(cfg: DataConfig, seed: int) -> list[str]:
    """All words that any corpus of this (config, seed) can contain, in a fixed order."""
    return vocabulary_words_fixed() + fact_keys(cfg.facts_keys, seed)


def word_salad(cfg: DataConfig, seed: int, n: int = 6000) -> tuple[str, ...]:
    """``n`` random sequences of 4-12 words drawn from the whole :func:`vocabulary`: no
    ability in them, but every token's embedding and output row gets trained (a pretrained
    model knows its tokens before any fine-tune teaches it a skill)."""
    rng = random.Random(f"word-salad-{seed}")
    words = vocabulary(cfg, seed)
    return tuple(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
                 for _ in range(n))


def language_b_words() -> frozenset[str]:
    words = {w for pair in B_NOUNS + B_VERBS for w in pair}
    return frozenset(words | set(B_ADJS) | set(B_FUNC))


def _lang_abilities(cfg: DataConfig, seed: int) -> tuple[Ability, Ability]:
    rng = random.Random(f"lang-{seed}")
    n_held = cfg.lang_probe + cfg.lang_eval
    seen: set[_Meaning] = set()
    held: list[_Meaning] = []
    while len(held) < n_held:
        m = _random_meaning(rng)
        if m not in seen:
            seen.add(m)
            held.append(m)
    probe_m, eval_m = held[: cfg.lang_probe], held[cfg.lang_probe:]
    train_m: list[tuple[_Meaning, bool]] = []
    while len(train_m) < cfg.lang_train:
        m = _random_meaning(rng)
        if m in seen:  # held-out meanings never appear in train, in either form
            continue
        train_m.append((m, rng.random() < cfg.reciprocal_fraction))
    a = Ability(
        "lang_a",
        tuple(sentence_a(m, r) for m, r in train_m),
        tuple(record_a(m) for m in probe_m),
        tuple(record_a(m) for m in eval_m),
    )
    b = Ability(
        "lang_b",
        tuple(sentence_b(m, r) for m, r in train_m),
        tuple(record_b(m) for m in probe_m),
        tuple(record_b(m) for m in eval_m),
    )
    return a, b


def _arith_ability(cfg: DataConfig, seed: int) -> Ability:
    rng = random.Random(f"arith-{seed}")
    triples = [(x, y, z) for x in range(10) for y in range(10) for z in range(10)]
    rng.shuffle(triples)
    probe_t = triples[: cfg.arith_probe]
    eval_t = triples[cfg.arith_probe: cfg.arith_probe + cfg.arith_eval]
    train_t = triples[cfg.arith_probe + cfg.arith_eval:]

    def q(t: tuple[int, int, int]) -> str:
        return " plus ".join(UNITS[d] for d in t) + " is"

    def a(t: tuple[int, int, int]) -> str:
        return f"{number_words(sum(t))} ."

    return Ability(
        "arithmetic",
        tuple(f"{q(t)} {a(t)}" for t in train_t),
        tuple(_record(q(t), a(t)) for t in probe_t),
        tuple(_record(q(t), a(t)) for t in eval_t),
        meta={"train_triples": len(train_t)},
    )


def shifted_arithmetic_train(ability: Ability, shift: int = 1) -> tuple[str, ...]:
    """The arithmetic train sentences with every answer replaced by ``(sum + shift) mod 28``.

    Used to plant damage: a fine-tune on these overwrites the ability.
    """
    out = []
    for text in ability.train:
        words = text.split()
        digits = [UNITS.index(w) for w in words[: words.index("is")] if w in UNITS]
        wrong = (sum(digits) + shift) % 28
        out.append(" ".join(words[: words.index("is") + 1]) + f" {number_words(wrong)} .")
    return tuple(out)


def _facts_ability(cfg: DataConfig, seed: int) -> Ability:
    """Facts (see the module docstring): train states every fact; the first half of the keys
    (in a seeded order) are the *known* ones (``meta["known"]``: what the merge scenario's
    parent learns), and probe and eval ask about disjoint halves of the others."""
    rng = random.Random(f"facts-{seed}")
    keys = fact_keys(cfg.facts_keys, seed)
    table = {k: rng.choice(FACT_VALUES) for k in keys}
    order = list(keys)
    rng.shuffle(order)
    known, new = order[: len(order) // 2], order[len(order) // 2:]

    def rec(k: str) -> Record:
        return _record(f"{k} lives in the", f"{table[k]} .")

    return Ability(
        "facts",
        tuple(f"{k} lives in the {table[k]} ." for k in keys),
        tuple(rec(k) for k in new[: len(new) // 2]),
        tuple(rec(k) for k in new[len(new) // 2:]),
        meta={"table": table, "known": tuple(rec(k)["text"] for k in known)},
    )


def _translate_ability(seed: int) -> Ability:
    """Word translation between A and B, both ways (see the module docstring)."""
    rng = random.Random(f"translate-{seed}")
    a_words = [w for pair in A_NOUNS + A_VERBS for w in pair] + A_ADJS
    b_words = [w for pair in B_NOUNS + B_VERBS for w in pair] + B_ADJS
    pairs = list(zip(a_words, b_words))
    rng.shuffle(pairs)
    half = len(pairs) // 2

    def both_ways(chosen: list[tuple[str, str]]) -> list[Record]:
        return ([_record(f"{a} ; ze", f"{b} !") for a, b in chosen]
                + [_record(f"{b} ze ;", f"{a} .") for a, b in chosen])

    known, new = both_ways(pairs[:half]), both_ways(pairs[half:])
    rng.shuffle(new)
    return Ability(
        "translate",
        tuple(r["text"] for r in new),
        tuple(new[: len(new) // 2]),
        tuple(new[len(new) // 2:]),
        meta={"known": tuple(r["text"] for r in known)},
    )


def make_abilities(cfg: DataConfig | None = None, seed: int = 0) -> dict[str, Ability]:
    """All five abilities, deterministic from ``(cfg, seed)``; keys are :data:`ABILITIES`."""
    cfg = cfg or DataConfig()
    lang_a, lang_b = _lang_abilities(cfg, seed)
    return {
        "lang_a": lang_a,
        "lang_b": lang_b,
        "arithmetic": _arith_ability(cfg, seed),
        "facts": _facts_ability(cfg, seed),
        "translate": _translate_ability(seed),
    }


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_corpora(abilities: dict[str, Ability], root: Path) -> dict[str, dict[str, str]]:
    """Write ``<root>/<ability>/{train.txt,train.jsonl,probe.jsonl,eval.jsonl}``.

    Returns ``{ability: {split: path relative to root's parent}}`` for the manifest.
    """
    paths: dict[str, dict[str, str]] = {}
    for name, ab in abilities.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "train.txt").write_text("".join(t + "\n" for t in ab.train), encoding="utf-8")
        write_jsonl(d / "train.jsonl", ({"text": t} for t in ab.train))
        write_jsonl(d / "probe.jsonl", ab.probe)
        write_jsonl(d / "eval.jsonl", ab.eval)
        rel = f"{root.name}/{name}"
        paths[name] = {
            "train": f"{rel}/train.jsonl",
            "train_txt": f"{rel}/train.txt",
            "probe": f"{rel}/probe.jsonl",
            "eval": f"{rel}/eval.jsonl",
        }
    return paths
