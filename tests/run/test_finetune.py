"""Compatibility fine-tune: masked scope keeps every unselected element bit-identical,
determinism, loss goes down, tied embeddings, bad input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actlang.arch.adapters import ChannelSpace
from actlang.arch.corpus import TokenizedCorpus, inline
from actlang.arch.errors import RuntimeUserError
from actlang.run.finetune import causal_lm_loss, finetune, trainable_masks
from actlang.run.mask import ChannelMask
from actlang.run.scores import random_scores
from actlang.run.select import select_channels

from .conftest import SENTENCES, make_config, make_model, make_tokenizer

PROPS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def data(tok):
    return inline(SENTENCES).tokenize(tok)


@pytest.fixture(scope="module")
def llama():
    return make_model("llama", seed=5)


def _space(model) -> ChannelSpace:
    return ChannelSpace.from_config(model.config.to_dict())


def _mask(model, seed: int, frac: float, tie=None) -> ChannelMask:
    space = _space(model)
    return select_channels(random_scores(space, seed), space, frac, tie=tie)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


def _n_changed(before, model) -> int:
    return sum(int((v.view(torch.int32) != before[k].view(torch.int32)).sum()) for k, v in model.state_dict().items())


@PROPS
@given(seed=st.integers(0, 10_000), frac=st.floats(0.01, 0.3), tie=st.sampled_from([None, "neuron", "head"]),
       wd=st.sampled_from([0.0, 0.5]), family=st.sampled_from(["llama", "gpt2"]))
def test_masked_finetune_changes_only_masked_elements(tok, data, seed, frac, tie, wd, family):
    model = make_model(family, seed=seed % 7)
    mask = _mask(model, seed, frac, tie)
    before = _snapshot(model)
    report = finetune(model, tok, data, steps=3, lr=1e-2, batch_size=4, seed=seed, masks=[mask], weight_decay=wd)
    changed_in_mask = 0
    selected = 0
    for name, t in model.state_dict().items():
        em = mask.element_mask(name, tuple(t.shape))
        if em is None:
            assert _bits_equal(t, before[name]), name  # untouched tensors: every bit the same
            continue
        assert _bits_equal(t[~em], before[name][~em]), name  # unselected elements: bit-identical
        changed_in_mask += int((t[em] != before[name][em]).sum())
        selected += int(em.sum())
    assert changed_in_mask > 0.5 * selected  # Adam moves (almost) every selected element
    assert report.elements_trainable == selected
    assert len(report.losses) == 3 and report.steps == 3


def test_full_scope_changes_more(tok, data, llama):
    mask = _mask(llama, 0, 0.05)
    masked, full = copy.deepcopy(llama), copy.deepcopy(llama)
    before = _snapshot(llama)
    r1 = finetune(masked, tok, data, steps=3, lr=1e-2, masks=[mask])
    r2 = finetune(full, tok, data, steps=3, lr=1e-2, scope="full")
    assert _n_changed(before, full) > 5 * _n_changed(before, masked) > 0
    assert r2.elements_trainable == r2.elements_total == sum(p.numel() for p in llama.parameters())
    assert r1.elements_trainable < r2.elements_trainable
    assert r2.parameters_trainable == len(list(llama.parameters()))


def test_deterministic(tok, data, llama):
    mask = _mask(llama, 1, 0.1, tie="neuron")
    runs = []
    for _ in range(2):
        m = copy.deepcopy(llama)
        r = finetune(m, tok, data, steps=4, lr=5e-3, batch_size=4, seed=3, masks=[mask], weight_decay=0.1)
        runs.append((m.state_dict(), r.losses))
    (a, la), (b, lb) = runs
    assert la == lb
    for k in a:
        assert _bits_equal(a[k], b[k]), k
    other = copy.deepcopy(llama)  # another seed draws other batches
    r = finetune(other, tok, data, steps=4, lr=5e-3, batch_size=4, seed=4, masks=[mask], weight_decay=0.1)
    assert r.losses != la


def test_loss_decreases_on_memorization(tok):
    corpus = inline(["the cat sat on the mat", "2 + 3 = 5"]).tokenize(tok)
    model = make_model("llama", seed=9)
    report = finetune(model, tok, corpus, steps=20, lr=2e-2, batch_size=2, scope="full")
    assert report.losses[-1] < 0.3 * report.losses[0]
    masked = make_model("llama", seed=9)
    mask = select_channels(random_scores(_space(masked), 0), _space(masked), 0.3)
    r2 = finetune(masked, tok, corpus, steps=20, lr=2e-2, batch_size=2, masks=[mask])
    assert r2.losses[-1] < 0.85 * r2.losses[0]  # 30 % of the rows learn too, more slowly


def test_loss_is_over_non_padding_tokens():
    logits = torch.randn(2, 4, 7)
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    att = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    loss, n = causal_lm_loss(logits, ids, att)
    assert n == 4
    pairs = [(0, 0, 2), (0, 1, 3), (0, 2, 4), (1, 0, 6)]
    expect = torch.stack([-torch.log_softmax(logits[b, t], -1)[y] for b, t, y in pairs]).mean()
    torch.testing.assert_close(loss, expect)


def test_tied_embeddings(tok, data):
    model = make_model("llama", seed=2, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    rows = torch.zeros(128, dtype=torch.bool)
    rows[[5, 40, 77]] = True
    # a mask made on an untied layout names lm_head.weight: it trains the shared tensor's rows
    space = ChannelSpace.from_config(make_config("llama").to_dict())
    mask = ChannelMask.from_channels(space, {"lm_head": rows, "layers.1.mlp.up": torch.ones(48, dtype=torch.bool)})
    before = _snapshot(model)
    finetune(model, tok, data, steps=3, lr=1e-2, masks=[mask])
    emb, emb0 = model.model.embed_tokens.weight.detach(), before["model.embed_tokens.weight"]
    changed_rows = (emb != emb0).any(1).nonzero().flatten().tolist()
    assert set(changed_rows) <= {5, 40, 77} and changed_rows
    for k, v in model.state_dict().items():
        if "embed_tokens" not in k and "lm_head" not in k and "layers.1.mlp.up_proj" not in k:
            assert _bits_equal(v, before[k]), k
    # the tied layout's own mask (lm_head rows live in the embedding) gives the same selection
    tied_space = _space(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tied_mask = ChannelMask.from_channels(tied_space, {"lm_head": rows})
    tm = trainable_masks(model, [tied_mask])
    assert list(tm) == ["model.embed_tokens.weight"] and tm["model.embed_tokens.weight"].any(1).sum() == 3


def test_scope_none_and_state_restored(tok, data, llama):
    model = copy.deepcopy(llama).eval()
    before = _snapshot(model)
    r = finetune(model, tok, data, steps=5, lr=1e-2, scope="none")
    assert r.losses == [] and r.steps == 0 and _n_changed(before, model) == 0
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    seen = []
    finetune(model, tok, data, steps=2, lr=1e-3, masks=[_mask(model, 0, 0.05)], progress=lambda s, l: seen.append((s, l)))
    assert [s for s, _ in seen] == [1, 2] and all(l > 0 for _, l in seen)
    assert not model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_bad_input(tok, data, llama):
    model = copy.deepcopy(llama)
    space = _space(model)
    with pytest.raises(RuntimeUserError, match="non-empty mask"):
        finetune(model, tok, data, steps=2, lr=1e-3, masks=[])
    with pytest.raises(RuntimeUserError, match="non-empty mask"):
        finetune(model, tok, data, steps=2, lr=1e-3, masks=[ChannelMask.empty(space)])
    mask = _mask(model, 0, 0.05)
    with pytest.raises(RuntimeUserError, match="steps"):
        finetune(model, tok, data, steps=0, lr=1e-3, masks=[mask])
    with pytest.raises(RuntimeUserError, match="lr"):
        finetune(model, tok, data, steps=1, lr=0.0, masks=[mask])
    with pytest.raises(RuntimeUserError, match="batch_size"):
        finetune(model, tok, data, steps=1, lr=1e-3, batch_size=0, masks=[mask])
    with pytest.raises(RuntimeUserError, match="scope"):
        finetune(model, tok, data, steps=1, lr=1e-3, scope="some")
    with pytest.raises(RuntimeUserError, match="weight_decay"):
        finetune(model, tok, data, steps=1, lr=1e-3, masks=[mask], weight_decay=-1)
    with pytest.raises(RuntimeUserError, match="no sequence"):
        finetune(model, tok, TokenizedCorpus([([5], [True])]), steps=1, lr=1e-3, scope="full")
    gpt2_space = ChannelSpace.from_config(make_config("gpt2").to_dict())
    with pytest.raises(RuntimeUserError, match="another model"):
        finetune(model, tok, data, steps=1, lr=1e-3, masks=[select_channels(random_scores(gpt2_space, 0), gpt2_space, 0.1)])
    with pytest.raises(RuntimeUserError, match="lower the learning rate"):
        finetune(model, tok, data, steps=3, lr=1e30, scope="full")
