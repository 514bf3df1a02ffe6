from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actlang.arch.adapters import ChannelSpace
from actlang.arch.corpus import inline
from actlang.arch.errors import RuntimeUserError
from actlang.run.corpus import batches
from actlang.run.stats import (
    COUNTERS,
    ChannelStats,
    collect_paired_stats,
    collect_stats,
)

from .conftest import SENTENCES, perturbed

MORE = SENTENCES + ["zz top", "one two three four five six", "k", "the end of the corpus is near"]


def _manual(model, space, tc, keys, batch_size):
    """Full activations via plain hooks, masked and reduced by hand."""
    acts = {k: [] for k in keys}
    handles = []
    for k in keys:
        e = space[k]
        mod = model.get_submodule(e.hook.module)
        handles.append(mod.register_forward_hook(
            lambda m, i, o, k=k, e=e: acts[k].append(o[..., e.hook.start:e.hook.stop].clone())))
    masks = []
    with torch.no_grad():
        for b in batches(tc, batch_size):
            model(input_ids=b.input_ids, attention_mask=b.attention_mask)
            masks.append(b.score_mask)
    for h in handles:
        h.remove()
    return {k: torch.cat([a[m] for a, m in zip(acts[k], masks)]).double() for k in keys}


def test_unpaired_matches_manual(family_models, tokenizer):
    model = family_models["llama"][0]
    space = ChannelSpace.from_config(model.config)
    tc = inline(MORE).tokenize(tokenizer)
    keys = ["layers.0.attn.q", "layers.1.mlp.down", "layers.0.mlp.gate"]
    s = collect_stats(model, space, tc, entries=keys, batch_size=3)
    ref = _manual(model, space, tc, keys, 3)
    for k in keys:
        x = ref[k]
        assert s[k]["count"][0] == x.shape[0] == tc.n_scored
        torch.testing.assert_close(s[k]["sum"], x.sum(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s[k]["sum_abs"], x.abs().sum(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s[k]["sum_sq"], (x * x).sum(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s[k]["count_pos"], (x > 0).sum(0).double())


def test_paired_matches_manual_and_unpaired(family_models, tokenizer):
    a, b = family_models["qwen2"]
    space = ChannelSpace.from_config(a.config)
    tc = inline(MORE).tokenize(tokenizer)
    keys = ["layers.0.attn.k", "layers.1.mlp.up"]
    res = collect_paired_stats(a, b, space, tc, entries=keys, batch_size=4)
    ra, rb = _manual(a, space, tc, keys, 4), _manual(b, space, tc, keys, 4)
    for k in keys:
        torch.testing.assert_close(res.paired.mean_absdiff(k), (rb[k] - ra[k]).abs().mean(0), rtol=1e-5, atol=1e-7)
    alone = collect_stats(a, space, tc, entries=keys, batch_size=4)
    assert res.a.allclose(alone, rtol=0)  # identical computation: exactly equal


def test_score_span_restricts_positions(family_models, tokenizer, tmp_path):
    import json

    from actlang.arch.corpus import jsonl

    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"q": f"{i}+{i}=", "a": str(2 * i)}) for i in range(12)) + "\n")
    tc = jsonl(p, text="{q}{a}", score="a").tokenize(tokenizer)
    model = family_models["gpt2"][0]
    space = ChannelSpace.from_config(model.config)
    s = collect_stats(model, space, tc, batch_size=5)
    assert s.n_scored == tc.n_scored == sum(len(str(2 * i)) for i in range(12))


@settings(max_examples=12, deadline=None)
@given(batch_size=st.integers(1, 4), cut=st.integers(0, 10), paired=st.booleans())
def test_merged_halves_equal_whole(family_models, tokenizer, batch_size, cut, paired):
    a, b = family_models["phi3"]
    space = ChannelSpace.from_config(a.config)
    tc = inline(MORE).tokenize(tokenizer)
    at = min(cut * batch_size, len(tc))  # split on a batch boundary: the same batches run
    first, second = tc.split(at)
    if paired:
        whole = collect_paired_stats(a, b, space, tc, batch_size=batch_size).paired
        h1 = collect_paired_stats(a, b, space, first, batch_size=batch_size).paired
        h2 = collect_paired_stats(a, b, space, second, batch_size=batch_size).paired
    else:
        whole = collect_stats(a, space, tc, batch_size=batch_size)
        h1 = collect_stats(a, space, first, batch_size=batch_size)
        h2 = collect_stats(a, space, second, batch_size=batch_size)
    merged = h1.merge(h2)
    for k in whole.keys():
        assert torch.equal(merged[k]["count"], whole[k]["count"])  # counts exactly
    assert merged.allclose(whole, rtol=1e-12, atol=1e-12)  # sums up to float64 rounding


def test_save_load_roundtrip(family_models, tokenizer, tmp_path):
    a, b = family_models["gemma3_text"]
    space = ChannelSpace.from_config(a.config)
    tc = inline(SENTENCES).tokenize(tokenizer)
    res = collect_paired_stats(a, b, space, tc, entries=list(space), batch_size=3)
    for s in (res.paired, res.a):
        path = s.save(tmp_path / f"{s.kind}.safetensors")
        back = ChannelStats.load(path)
        assert back.kind == s.kind and back.allclose(s, rtol=0) and back.meta == s.meta
    assert res.a.meta["corpus_digest"] == tc.digest()
    # q_norm counts tokens x heads
    assert res.a["layers.0.attn.q_norm"]["count"][0] == tc.n_scored * 4
    with pytest.raises(RuntimeUserError):
        res.paired.merge(res.a)
    with pytest.raises(RuntimeUserError, match="not found"):
        ChannelStats.load(tmp_path / "nope.safetensors")


def test_counters_and_no_lm_head_pass(family_models, tokenizer):
    a, b = family_models["mistral"]
    space = ChannelSpace.from_config(a.config)
    tc = inline(SENTENCES).tokenize(tokenizer)
    head_calls = []
    hooks = [model.lm_head.register_forward_hook(lambda *_: head_calls.append(1)) for model in (a, b)]
    try:
        COUNTERS.reset()
        collect_stats(a, space, tc, batch_size=2, label="a")
        assert COUNTERS.forward_passes == 1 and COUNTERS.forward_batches == 3 and COUNTERS.passes_by_label == {"a": 1}
        collect_paired_stats(a, b, space, tc, batch_size=4, labels=("a", "b"))
        assert COUNTERS.forward_passes == 3 and COUNTERS.passes_by_label == {"a": 2, "b": 1}
        assert COUNTERS.tokens_scored == 2 * tc.n_scored
        assert head_calls == []  # no entry reads the logits: the output head never ran
        # lm_head hooked: the full model runs
        s = collect_stats(a, space, tc, entries=["lm_head"], batch_size=8)
        assert s["lm_head"]["count"][0] == tc.n_scored and head_calls == [1]
    finally:
        for hook in hooks:
            hook.remove()


def test_paired_needs_two_models(family_models, tokenizer):
    a, _ = family_models["llama"]
    space = ChannelSpace.from_config(a.config)
    with pytest.raises(RuntimeUserError, match="two different"):
        collect_paired_stats(a, a, space, inline(["x"]).tokenize(tokenizer))


def test_field_subsets(family_models, tokenizer, tmp_path):
    a, b = family_models["llama"]
    space = ChannelSpace.from_config(a.config)
    tc = inline(MORE).tokenize(tokenizer)
    full = collect_stats(a, space, tc, batch_size=3)
    part = collect_stats(a, space, tc, batch_size=3, fields=("sum_abs",))
    assert part.fields == ("count", "sum_abs")
    k = "layers.1.mlp.up"
    assert torch.equal(part[k]["sum_abs"], full[k]["sum_abs"])
    with pytest.raises(RuntimeUserError, match="'sum' was not collected"):
        part.mean_act(k)
    back = ChannelStats.load(part.save(tmp_path / "p.safetensors"))
    assert back.fields == part.fields and back.allclose(part, rtol=0)
    with pytest.raises(RuntimeUserError, match="different fields"):
        full.merge(part)
    res = collect_paired_stats(a, b, space, tc, fields=(), unpaired=False)
    assert res.paired.fields == ("count", "sum_absdiff") and res.a is None
    with pytest.raises(RuntimeUserError, match="unknown unpaired statistic"):
        collect_stats(a, space, tc, fields=("median",))


def test_lockstep_with_two_partners_equals_two_paired_passes(family_models, tokenizer):
    from actlang.run.stats import COUNTERS, collect_lockstep_stats

    a, b = family_models["llama"]
    c = perturbed(b, seed=7)
    space = ChannelSpace.from_config(a.config)
    data = inline(SENTENCES).tokenize(tokenizer)
    COUNTERS.reset()
    together = collect_lockstep_stats(a, [b, c], space, data, labels=["a", "b", "c"])
    assert COUNTERS.passes_by_label == {"a": 1, "b": 1, "c": 1}
    for partner, result in zip((b, c), together):
        alone = collect_paired_stats(a, partner, space, data)
        assert result.paired.allclose(alone.paired, rtol=1e-9)
        assert result.a.allclose(alone.a, rtol=1e-9) and result.b.allclose(alone.b, rtol=1e-9)
