from __future__ import annotations

import json

import pytest
import torch

from actlang.arch.corpus import TokenizedCorpus, inline, jsonl, mix, text_file
from actlang.arch.errors import RuntimeUserError
from actlang.run.corpus import batches


def test_text_file_limit_seed(tmp_path, tokenizer):
    p = tmp_path / "t.txt"
    p.write_text("\n".join(f"line {i}" for i in range(20)) + "\n\n")
    assert [d.text for d in text_file(p, limit=3)] == ["line 0", "line 1", "line 2"]
    a, b = text_file(p, limit=5, seed=1), text_file(p, limit=5, seed=1)
    assert a == b and a != text_file(p, limit=5, seed=2)
    assert len(text_file(p)) == 20


def test_jsonl_score_span_becomes_token_mask(tmp_path, tokenizer):
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"q": "2+3=", "a": "5"}) + "\n" + json.dumps({"q": "10+1=", "a": "11"}) + "\n")
    corpus = jsonl(p, text="Q: {q} A: {a}", score="a")
    assert corpus.documents[0].text == "Q: 2+3= A: 5"
    assert corpus.documents[0].spans == ((11, 12),)
    tc = corpus.tokenize(tokenizer)
    ids, flags = tc.sequences[1]
    scored = "".join(tokenizer.decode([i]) for i, f in zip(ids, flags) if f)
    assert scored == "11"
    assert tc.n_scored == 3
    batch = next(batches(tc, 2))
    assert batch.input_ids.shape == batch.score_mask.shape == batch.attention_mask.shape
    assert batch.n_scored == 3 and not bool((batch.score_mask & (batch.attention_mask == 0)).any())


def test_jsonl_errors(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"q": "x"}\n')
    with pytest.raises(RuntimeUserError, match="field 'a'"):
        jsonl(p, text="{q} {a}")
    with pytest.raises(RuntimeUserError, match="score field 'z'"):
        jsonl(p, text="{q}", score="z")
    p.write_text('{"q": "x"}\nnot json\n')
    with pytest.raises(RuntimeUserError, match=r"m\.jsonl:2"):
        jsonl(p, text="{q}")
    with pytest.raises(RuntimeUserError, match="not found"):
        text_file(tmp_path / "missing.txt")


def test_mix_weights(tokenizer):
    a = inline([f"a{i}" for i in range(30)], name="a")
    b = inline([f"b{i}" for i in range(30)], name="b")
    m = mix([(a, 1.0), (b, 3.0)], limit=20, seed=0)
    texts = [d.text for d in m]
    assert len(texts) == 20 and sum(t.startswith("a") for t in texts) == 5
    assert mix([(a, 1.0), (b, 3.0)], limit=20, seed=0) == m
    assert len(mix([(a, 1.0), (b, 3.0)])) == 40  # as large as possible without repeats
    with pytest.raises(RuntimeUserError):
        mix([(a, 1.0), (b, 0.0)])
    with pytest.raises(RuntimeUserError, match="needs"):
        mix([(a, 1.0), (b, 1.0)], limit=100)


def test_max_tokens_and_digest(tokenizer):
    c = inline(["hello world", "foo bar baz", "x"])
    tc = c.tokenize(tokenizer, max_tokens=15)
    assert tc.n_tokens == 15
    assert c.tokenize(tokenizer).digest() == c.tokenize(tokenizer).digest()
    assert c.tokenize(tokenizer).digest() != tc.digest()
    assert c.tokenize(tokenizer, max_length=4).n_tokens == 4 + 4 + 1
    flipped = TokenizedCorpus([(ids, [not f for f in fl]) for ids, fl in c.tokenize(tokenizer).sequences])
    assert flipped.digest() != c.tokenize(tokenizer).digest()


def test_batches_pad_right(tokenizer):
    tc = inline(["abc", "a"]).tokenize(tokenizer)
    b = next(batches(tc, 8))
    assert b.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b.input_ids[1, 1] == tokenizer.pad_token_id
    assert torch.equal(b.score_mask, b.attention_mask.bool())


def test_jsonl_records_take_the_same_items_as_the_corpus(tmp_path):
    from actlang.arch.corpus import jsonl, jsonl_records

    path = tmp_path / "r.jsonl"
    path.write_text("".join(f'{{"q": "q{i}", "a": "a{i}"}}\n' for i in range(20)))
    records = jsonl_records(path, limit=5, seed=3)
    corpus = jsonl(path, text="{q} {a}", limit=5, seed=3)
    assert [f"{r['q']} {r['a']}" for r in records] == [d.text for d in corpus.documents]
