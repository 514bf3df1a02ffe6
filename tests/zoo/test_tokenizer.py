from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from actlang.zoo.data import DataConfig, make_abilities, vocabulary
from actlang.zoo.tokenizer import build_tokenizer

CFG = DataConfig(lang_train=300, lang_probe=16, lang_eval=16, facts_keys=16)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(vocabulary(CFG, 0))


def test_special_tokens(tok):
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.padding_side == "left"


def test_round_trip_every_corpus(tok):
    ab = make_abilities(CFG, 0)
    for a in ab.values():
        for t in a.train + tuple(r["text"] for r in a.probe + a.eval):
            ids = tok(t)["input_ids"]
            assert ids[0] == tok.bos_token_id
            assert tok.unk_token_id not in ids
            assert len(ids) == len(t.split()) + 1
            assert tok.decode(ids, skip_special_tokens=True) == t


def test_unknown_word(tok):
    ids = tok("the blorptastic cat")["input_ids"]
    assert ids[2] == tok.unk_token_id


def test_save_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "the big cat sees the dogs , and the dogs see the big cat ."
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.pad_token_id == 0 and loaded.eos_token_id == 2
    assert loaded.padding_side == "left"
    batch = loaded(["the cat", "the big cat"], padding=True)
    assert batch["input_ids"][0][0] == loaded.pad_token_id


def test_rejects_bad_words():
    with pytest.raises(ValueError):
        build_tokenizer(["two words"])
