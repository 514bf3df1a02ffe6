"""Channel scores: each method against hand-computed values, the controls, and every score
the registry declares computed end to end by the executor's score handler."""

from __future__ import annotations

import pytest
import torch

from actlang.arch.adapters import ChannelSpace
from actlang.arch.errors import RuntimeUserError
from actlang.arch.registry import SCORES
from actlang.compile import ops as O
from actlang.compile.cache import Cache
from actlang.compile.plan import make_plan
from actlang.lang.checker import check_file
from actlang.run import handlers
from actlang.run.checkpoint import Checkpoint
from actlang.run.executor import Executor
from actlang.run.scores import (
    Scores,
    changed_channels,
    compute_scores,
    contrastive,
    random_scores,
    weight_delta_scores,
    weight_pass,
)
from actlang.run.select import kind_candidates
from actlang.run.stats import ChannelStats


def _stats(values: dict, kind="unpaired"):
    return ChannelStats(kind, values)


def test_score_methods_and_contrast():
    one = torch.ones(3, dtype=torch.float64)
    a = _stats({"m": {"count": 2 * one, "sum": torch.tensor([2.0, -2, 0]), "sum_abs": torch.tensor([2.0, 2, 4]),
                      "sum_sq": torch.tensor([2.0, 2, 8]), "count_pos": torch.tensor([2.0, 0, 1])}})
    b = _stats({"m": {"count": 2 * one, "sum": torch.tensor([4.0, -2, 0]), "sum_abs": torch.tensor([4.0, 2, 4]),
                      "sum_sq": torch.tensor([8.0, 2, 8]), "count_pos": torch.tensor([2.0, 0, 2])}})
    t = lambda *x: torch.tensor(x, dtype=torch.float64)
    torch.testing.assert_close(compute_scores("absmean_diff", a=a, b=b)["m"], t(1, 0, 0))
    torch.testing.assert_close(compute_scores("mean_diff", a=a, b=b)["m"], t(1, 0, 0))
    torch.testing.assert_close(compute_scores("m2_diff", a=a, b=b)["m"], t(3, 0, 0))
    torch.testing.assert_close(compute_scores("freq_diff", a=a, b=b)["m"], t(0, 0, 0.5))
    torch.testing.assert_close(compute_scores("absmean_diff", a=a, b=b, normalize="relative")["m"], t(1 / 1.5, 0, 0),
                               rtol=1e-6, atol=1e-6)
    z = compute_scores("m2_diff", a=a, b=b, normalize="zscore")["m"]
    assert abs(float(z.mean())) < 1e-12 and abs(float(z.std()) - 1) < 1e-12
    p = _stats({"m": {"count": 2 * one, "sum_absdiff": t(2, 4, 0), "sum_diff": t(0, 0, 0), "sum_sqdiff": t(0, 0, 0),
                      "sum_abs_a": t(2, 2, 2), "sum_abs_b": t(2, 2, 2)}}, "paired")
    torch.testing.assert_close(compute_scores(paired=p)["m"], t(1, 2, 0))
    c = contrastive(compute_scores(paired=p), compute_scores("absmean_diff", a=a, b=b), beta=2.0)
    torch.testing.assert_close(c["m"], t(-1, 2, 0))
    with pytest.raises(RuntimeUserError, match="paired statistics"):
        compute_scores("paired_absdiff", a=a, b=b)
    with pytest.raises(RuntimeUserError, match="unknown score"):
        compute_scores("vibes", a=a, b=b)


def test_weight_delta_is_the_norm_of_each_channels_parameter_change(family_dirs):
    trg_dir, src_dir = family_dirs["gpt2"]
    space = ChannelSpace.from_pretrained(trg_dir)
    s = weight_delta_scores(space, src_dir, trg_dir)
    trg, src = Checkpoint.open(trg_dir), Checkpoint.open(src_dir)
    name = "transformer.h.1.mlp.c_fc"  # Conv1D [in, out]: a channel is a column and a bias
    d = src.get(name + ".weight") - trg.get(name + ".weight")
    db = src.get(name + ".bias") - trg.get(name + ".bias")
    ref = (d.double().square().sum(0) + db.double().square()).sqrt()
    torch.testing.assert_close(s["layers.1.mlp.up"], ref)
    assert set(s.keys()) == set(space.keys())


def test_one_pass_over_the_weights_finds_the_scores_and_the_changed_channels(family_dirs):
    """weight_pass reads each tensor pair once for both: the same bits as the definitions
    (the float64 squared difference summed per channel; any element's bits differing)."""
    trg_dir, src_dir = family_dirs["llama"]
    space = ChannelSpace.from_pretrained(trg_dir)
    trg, src = Checkpoint.open(trg_dir), Checkpoint.open(src_dir)
    scores, (channels, inputs) = weight_pass(space, src_dir, trg_dir)
    assert changed_channels(space, src_dir, trg_dir)[0].keys() == channels.keys()
    for e in space:
        squares, differ = None, None
        for part in e.parts:
            a, b = src.get(part.name), trg.get(part.name)
            d = (a.double() - b.double()).square().narrow(part.axis, part.offset, part.size)
            other = [i for i in range(d.dim()) if i != part.axis]
            s = d.sum(dim=other) if other else d
            squares = s if squares is None else squares + s
            ne = (a.view(torch.int32) != b.view(torch.int32)).narrow(part.axis, part.offset, part.size)
            n = ne.any(dim=other) if other else ne
            differ = n if differ is None else differ | n
        assert torch.equal(scores[e.key].view(torch.int64), squares.sqrt().view(torch.int64)), e.key
        assert torch.equal(channels[e.key], differ), e.key
        for part in e.inputs:
            ne = src.get(part.name).view(torch.int32) != trg.get(part.name).view(torch.int32)
            other = [i for i in range(ne.dim()) if i != part.axis]
            assert torch.equal(inputs[e.key], ne.narrow(part.axis, part.offset, part.size).any(dim=other))
    assert any(bool(v.any()) for v in channels.values()) and set(inputs) == {e.key for e in space if e.inputs}


def test_random_scores_are_seeded_uniform_values_for_every_channel():
    space = ChannelSpace.from_config({"model_type": "llama", "hidden_size": 16, "intermediate_size": 24,
                                      "num_hidden_layers": 2, "num_attention_heads": 4,
                                      "num_key_value_heads": 2, "vocab_size": 32})
    first, again, other = random_scores(space, 5), random_scores(space, 5), random_scores(space, 6)
    assert first.keys() == [e.key for e in space]
    assert all(first[e.key].shape == (e.size,) for e in space)
    assert all(torch.equal(first[k], again[k]) for k in first.keys())
    assert not torch.equal(first.flat(), other.flat())
    assert 0 <= float(first.flat().min()) and float(first.flat().max()) < 1


def test_every_declared_score_runs_through_the_executor(write_spec, tmp_path, monkeypatch):
    """One rule per score of the registry, run by the executor: a declared score that lowering,
    statistics or the score handler cannot compute fails here."""
    spec = write_spec('surgery s -> "out/s" { target = tuned  transfer sums from base '
                      f'{{ budget = 10%  score = sweep({", ".join(SCORES.names)}) }}  eval = [] }}')
    cache = Cache(tmp_path / "cache")
    plan = make_plan(check_file(spec), cache, dry_run=False)
    computed: dict[str, Scores] = {}

    def recording(ctx, op, inputs, cached):
        outcome = handlers.score(ctx, op, inputs, cached)
        computed[op.score.name] = outcome.value
        return outcome

    monkeypatch.setitem(handlers.HANDLERS, O.Score, recording)
    result = Executor(plan, cache).run()
    assert sorted(computed) == sorted(SCORES.names)
    space = plan.models["tuned"].space
    for name, scores in computed.items():
        for entry in kind_candidates(space, warn=False):
            values = scores[entry.key]
            assert values.shape == (entry.size,) and bool(torch.isfinite(values).all()), (name, entry.key)
        assert float(scores.flat().abs().sum()) > 0, name  # the two models differ
    assert len(result.surgeries) == len(SCORES)
    assert all(s.transfer["parameters_changed"] > 0 for s in result.surgeries)


def test_a_weight_score_reads_only_what_its_rules_may_select(write_spec, tmp_path):
    """weight_delta over the embeddings and the output head (the largest tensors, never
    selected by default) was most of its time and memory: it scores its rules' candidates."""
    from actlang.compile import ops as O
    from actlang.compile.cache import Cache
    from actlang.compile.plan import make_plan
    from actlang.lang.checker import check_file
    from actlang.run.context import RunContext
    from actlang.run.handlers import _selectable

    spec = write_spec('surgery s -> "out/s" { target = tuned\n'
                      '  transfer sums from base { budget = 10%  score = weight_delta } }\n'
                      'surgery t -> "out/t" { target = tuned\n'
                      '  transfer sums from base { budget = 10%  score = weight_delta\n'
                      '    channels = [mlp.*] } }\n')
    program = check_file(spec)
    plan = make_plan(program, Cache(tmp_path / "cache"), dry_run=True)
    (score,) = [op for op in plan.order if isinstance(op, O.Score)]  # shared by both rules
    entries = _selectable(RunContext(plan, Cache(tmp_path / "cache"), tmp_path), score)
    kinds = {e.kind for e in entries}
    assert kinds and not kinds & {"embed", "lm_head"}
    assert any(k.startswith("mlp") for k in kinds) and any(k.startswith("attn") for k in kinds)
