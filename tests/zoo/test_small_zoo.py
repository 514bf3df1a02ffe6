"""The ``small`` zoo really has, and really loses, abilities (slow: builds it, ~2 minutes).

Thresholds state what the scenarios are for; they are not tuned to the measured numbers
(see the zoo.json of a build for those).
"""

from __future__ import annotations

import hashlib

import pytest

from actlang.arch.zoo import MODELS
from actlang.run.evaluate import exact_match
from actlang.zoo.build import build_zoo, load_zoo_model
from actlang.zoo.data import read_jsonl

pytestmark = pytest.mark.slow


def test_base_has_its_abilities(small_zoo):
    acc = small_zoo.accuracy["base"]
    assert acc["arithmetic"] >= 0.8
    assert acc["lang_a"] >= 0.8


def test_forgetting_is_real(small_zoo):
    acc = small_zoo.accuracy
    assert acc["tuned"]["arithmetic"] <= 0.5 * acc["base"]["arithmetic"]


def test_tuned_learned_language_b(small_zoo):
    acc = small_zoo.accuracy
    assert acc["tuned"]["lang_b"] >= 0.5
    assert acc["tuned"]["lang_b"] >= acc["base"]["lang_b"] + 0.4
    ppl = small_zoo.data["perplexity"]
    assert ppl["tuned"]["lang_b"] < 0.5 * ppl["base"]["lang_b"]


def test_merge_specialists_have_their_ability(small_zoo):
    acc = small_zoo.accuracy
    assert acc["facts"]["facts"] >= 0.5 and acc["base"]["facts"] <= 0.2
    assert acc["lang_b"]["lang_b"] >= acc["base"]["lang_b"] + 0.2


def test_sparse_specialists_learned_what_their_parent_did_not(small_zoo):
    acc = small_zoo.accuracy
    parent = acc["parent"]
    for model, ability in (("facts_sparse", "facts"), ("translate_sparse", "translate")):
        assert acc[model][ability] >= 0.6 and parent[ability] <= 0.2, (model, acc[model])
        # replay of the parent's data: the other abilities stay
        assert acc[model]["arithmetic"] >= 0.8 * parent["arithmetic"], (model, acc[model])
        assert acc[model]["lang_a"] >= 0.9 * parent["lang_a"], (model, acc[model])


def test_planted_damage_is_real_and_localized(small_zoo):
    acc, oracle = small_zoo.accuracy, small_zoo.data["oracle"]
    base = acc["base"]["arithmetic"]
    assert acc["planted"]["arithmetic"] <= 0.5 * base
    assert acc["planted_decoy"]["arithmetic"] <= 0.5 * base
    # copying back exactly the planted rows restores the ability (damage is in those rows)
    assert oracle["planted_restored"]["arithmetic"] >= 0.9 * base


def test_damage_planted_in_the_language_b_specialist_is_real_and_localized(small_zoo):
    acc, oracle = small_zoo.accuracy, small_zoo.data["oracle"]
    donor, target = acc["lang_b"], acc["lang_b_planted"]
    assert target["arithmetic"] <= 0.5 * donor["arithmetic"], target
    assert target["lang_b"] >= 0.3, target  # it still knows language B
    # the damage rows, copied back from the specialist, bring the sums back
    assert oracle["lang_b_planted_restored"]["arithmetic"] >= 0.5 * donor["arithmetic"]
    # and they are not where the weights changed most: the decoys moved further
    delta = small_zoo.ground_truth()["mean_row_delta_l2"]["lang_b_planted"]
    assert delta["damage"] < delta["decoy"], delta


def test_manifest_accuracy_reproduces_from_disk(small_zoo):
    model, tok = load_zoo_model(small_zoo, "tuned")
    records = read_jsonl(small_zoo.corpus_path("arithmetic", "eval"))
    assert exact_match(model, tok, records, "q", "a") == small_zoo.accuracy["tuned"]["arithmetic"]


def test_small_build_is_bit_for_bit_deterministic(small_zoo, tmp_path):
    again = build_zoo(tmp_path, seed=0, profile="small")
    for m in MODELS:
        a = (small_zoo.model_path(m) / "model.safetensors").read_bytes()
        b = (again.model_path(m) / "model.safetensors").read_bytes()
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), m
    assert again.accuracy == small_zoo.accuracy


def test_batched_generation_matches_per_item(small_zoo):
    from actlang.run.evaluate import exact_match_details

    model, tok = load_zoo_model(small_zoo, "base")
    records = (read_jsonl(small_zoo.corpus_path("lang_a", "eval"))[:40]
               + read_jsonl(small_zoo.corpus_path("arithmetic", "eval"))[:40])
    batched = exact_match_details(model, tok, records, batch_size=64)
    single = exact_match_details(model, tok, records, batch_size=1)
    assert [d["output"] for d in batched] == [d["output"] for d in single]
