from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from actlang.run.evaluate import exact_match, exact_match_details, perplexity
from actlang.zoo.tokenizer import build_tokenizer

WORDS = ["a", "b", "c", "d", "e", "."]


class NextWord(torch.nn.Module):
    """Deterministic toy LM: after word x comes the next word of WORDS (cyclic); after the
    last real word comes '.'; after '.' comes <eos>."""

    def __init__(self, tok, cache=True):
        super().__init__()
        self.cache = cache
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab = len(tok)
        ids = [tok.convert_tokens_to_ids(w) for w in WORDS]
        self.next = {i: j for i, j in zip(ids[:-2], ids[1:-1])}
        self.next[ids[-2]] = ids[-1]
        self.next[ids[-1]] = tok.eos_token_id
        self.next[tok.bos_token_id] = ids[0]
        self.seen_positions = []

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=None, labels=None):
        self.seen_positions.append(position_ids)
        logits = torch.full((*input_ids.shape, self.vocab), -10.0)
        for b in range(input_ids.shape[0]):
            for t in range(input_ids.shape[1]):
                nxt = self.next.get(int(input_ids[b, t]), 0)
                logits[b, t, nxt] = 10.0
        return SimpleNamespace(logits=logits, past_key_values=("cache",) if self.cache else None)


@pytest.fixture
def tok():
    return build_tokenizer(WORDS)


def test_exact_match_rule(tok):
    model = NextWord(tok)
    records = [
        {"q": "a", "a": "b c"},        # right
        {"q": "a b c", "a": "d e ."},  # right (longer prompt: left padding in the batch)
        {"q": "a", "a": "b d"},        # wrong second word
        {"q": "d", "a": "e"},          # right; the model would go on with '.', not counted
    ]
    det = exact_match_details(model, tok, records)
    assert [d["match"] for d in det] == [True, True, False, True]
    assert exact_match(model, tok, records) == 0.75
    # per-item and batched agree, with and without a KV cache
    assert exact_match(model, tok, records, batch_size=1) == 0.75
    assert [d["match"] for d in exact_match_details(NextWord(tok, cache=False), tok, records)] \
        == [True, True, False, True]


def test_exact_match_with_max_new_tokens_cuts_at_eos(tok):
    model = NextWord(tok)
    records = [{"q": "c", "a": "d e ."}, {"q": "d", "a": "e"}]
    det = exact_match_details(model, tok, records, max_new_tokens=6)
    assert det[0]["output"] == "d e ." and det[0]["match"]
    assert det[1]["output"] == "e ." and not det[1]["match"]


def test_left_padding_positions(tok):
    model = NextWord(tok)
    exact_match(model, tok, [{"q": "a", "a": "b"}, {"q": "a b c d", "a": "e"}])
    first = model.seen_positions[0]
    assert first[0].tolist()[-2:] == [0, 1]       # <bos> a, left padded
    assert first[1].tolist() == [0, 1, 2, 3, 4]


def test_custom_fields_and_empty(tok):
    model = NextWord(tok)
    assert exact_match(model, tok, [{"prompt": "a", "answer": "b"}], "prompt", "answer") == 1.0
    assert exact_match(model, tok, []) == 0.0


def test_perplexity_uniform_and_perfect(tok):
    class Uniform(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, **kw):
            return SimpleNamespace(logits=torch.zeros((*input_ids.shape, len(tok))))

    assert perplexity(Uniform(), tok, ["a b c", "d"]) == pytest.approx(len(tok))
    # the toy model is (almost) certain of every next word
    assert perplexity(NextWord(tok), tok, ["a b c d", "a b"]) < 1.001
    with pytest.raises(ValueError):
        perplexity(Uniform(), tok, [""])
    assert math.isfinite(perplexity(Uniform(), tok, ["a"] * 3 + ["a b"]))
