"""One handler per op kind: ``handler(ctx, op, inputs, cached) -> Outcome``.

``inputs`` maps each of the op's graph predecessors to its result, so a handler reads what
it needs from the edges of the plan, never by searching other ops' results. ``cached`` is
true when the plan found the op's result in the cache (statistics, evaluations) or on disk
(an output that is up to date); such an op has no inputs.

Results flow downstream as values: a capture gives its statistics, a select its mask and
the scores it ranked, a transfer / merge / fine-tune a :class:`Stage` (its work directory
and what the report needs), an evaluation its metrics.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from actlang.arch.adapters import Entry
from actlang.arch.corpus import TokenizedCorpus, jsonl_records
from actlang.arch.errors import RuntimeUserError
from actlang.arch.files import has_tokenizer
from actlang.arch.registry import SCORES
from actlang.compile import ops as O
from actlang.compile.bind import (
    candidate_entries,
    raw_entries,
    runtime_budget,
)
from actlang.compile.resolve import built_zoo, zoo_ref
from actlang.lang import program as P
from actlang.run import stats as S
from actlang.run.context import RunContext
from actlang.run.corpus import check_token_ids
from actlang.run.mask import ChannelMask
from actlang.run.results import GateResult, SurgeryResult
from actlang.run.scores import Scores
from actlang.run.streamed import StreamedModel, collect_lockstep_stats_streamed

Inputs = dict[O.Op, Any]


@dataclass
class Outcome:
    """An op's result (what its successors receive) and what its record reports."""

    value: Any = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Selected:
    """A selection's mask, the scores it ranked (None for random scores), and how many of
    its channels have parameters that differ between donor and target (the rest move
    nothing)."""

    mask: ChannelMask
    scores: Scores | None
    moving: int


@dataclass(frozen=True)
class Stage:
    """A model state written to the work directory: after transfer, merge or fine-tune.

    Attributes:
        directory: the HF model directory.
        selections: each transfer rule's selection (empty for a merge).
        summary: what the transfer or merge reported (a fine-tune passes its source's on).
    """

    directory: Path
    selections: tuple[tuple[O.Select, Selected], ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[RunContext, Any, Inputs, bool], Outcome]


# ---- models and statistics --------------------------------------------------------------------


def load(ctx: RunContext, op: O.LoadModel, inputs: Inputs, cached: bool) -> Outcome:
    model = ctx.load(ctx.directory(op.model), op.model)
    ctx.loaded[op.model.name] = model
    return Outcome(model)


def capture(ctx: RunContext, op: O.Capture, inputs: Inputs, cached: bool) -> Outcome:
    """One forward pass per model over the corpus; every statistic of the op from it."""
    data = ctx.data(op.corpus, op.tokenizer)
    _check_scored(data, op)
    space = ctx.space(op.models[0])
    strategy = ctx.plan.strategies.get(op)
    # A streamed capture reads each model's files a layer at a time (the plan chose it:
    # the models do not fit in memory together); the others were loaded whole.
    streamed = {m.name: StreamedModel(ctx.directory(m), space.naming, dtype=ctx.dtype(m),
                                      device=ctx.device)
                for m in op.models} if strategy is not None and strategy.streamed else {}
    for model in op.models:
        _check_same_tokens(ctx, op, model, data)
        module = streamed[model.name].model if streamed else ctx.loaded[model.name]
        check_token_ids((ids for ids, _ in data.sequences), module,
                        f"the corpus {O.corpus_label(op.corpus)}", model.name)
    entries = _hooked(ctx, op)
    batches = len(ctx.ranks.batches(data.n_batches()))  # this rank's share
    produced: dict[tuple[P.ModelSpec, P.ModelSpec | None], S.ChannelStats] = {}
    for models in op.passes():
        done = 0

        def advance(_: int) -> None:
            nonlocal done
            done += 1
            ctx.progress.advance(done, batches)

        labels = [f"{m.name} on {O.corpus_label(op.corpus)}" for m in models]
        if len(models) > 1:
            anchor, *partners = models
            if streamed:
                results = collect_lockstep_stats_streamed(
                    [streamed[m.name] for m in models], space, data, entries=entries,
                    labels=labels, progress=advance, local=op.local, ranks=ctx.ranks)
            else:
                results = S.collect_lockstep_stats(
                    ctx.loaded[anchor.name], [ctx.loaded[p.name] for p in partners], space,
                    data, entries=entries, labels=labels, progress=advance, local=op.local,
                    ranks=ctx.ranks)
            produced[(anchor, None)] = results[0].a
            for partner, result in zip(partners, results):
                produced[(partner, None)] = result.b
                # Paired statistics are symmetric in |a - b|; the op names the pair as
                # (model, partner) in either order.
                produced[(anchor, partner)] = produced[(partner, anchor)] = result.paired
        else:
            (model,) = models
            produced[(model, None)] = S.collect_stats(ctx.loaded[model.name], space, data,
                                                      entries=entries, label=labels[0],
                                                      progress=advance, ranks=ctx.ranks)
    values = {s: produced[(s.model, s.partner)] for s in op.statistics}
    if not ctx.ranks.is_root:  # another rank's share of the statistics: rank 0 has the whole
        return Outcome(values)
    for statistic, value in values.items():  # cached at once: an interrupted run resumes
        key = ctx.plan.keys.get(statistic)
        if key is not None:
            ctx.cache.store("stats", key, value.save)
    return Outcome(values, {"forward_passes": op.pass_count(), "tokens": data.n_tokens})


def _hooked(ctx: RunContext, op: O.Capture) -> list[Entry]:
    """The entries a capture hooks: the kinds its statistics ask for (those selectable by
    default, or every kind), and the raw entries of their rules' ``module(...)`` selectors,
    each looked up in its statistic's model's space (the plan gives a model the raw entries
    of the rules on it; the first model of the capture may not be on every rule)."""
    space = ctx.space(op.models[0])
    kinds = S.default_stat_entries(space) if op.modules == "default" else \
        [e for e in space if e.hook is not None and e.kind != "raw"]
    raw = {e.key: e for s in op.statistics for e in raw_entries(ctx.space(s.model), s.raw)}
    return [*kinds, *raw.values()]


def _check_scored(data: TokenizedCorpus, op: O.Capture) -> None:
    """Statistics over no token are no statistics: every score would be 0 and the selection
    arbitrary."""
    if data.n_scored == 0:
        raise RuntimeUserError(
            f"{O.corpus_label(op.corpus)} gives 0 scored tokens with the tokenizer of "
            f"{op.tokenizer.name} ({len(data)} documents, {data.n_tokens} tokens)",
            hint="the corpus is empty, its documents are empty, or every scored span lies "
                 "past max_tokens (raise max_tokens, or check the score field)")


def _check_same_tokens(ctx: RunContext, op: O.Capture, model: P.ModelSpec,
                       data: TokenizedCorpus) -> None:
    """Both models of a capture read the corpus through one tokenizer; a model whose own
    tokenizer maps it to other ids has other token meanings, and comparing its activations
    on these ids measures nothing."""
    if model == op.tokenizer or not has_tokenizer(ctx.directory(model)):
        return
    if ctx.data(op.corpus, model).digest() != data.digest():
        raise RuntimeUserError(
            f"the tokenizers of {model.name} and {op.tokenizer.name} map "
            f"{O.corpus_label(op.corpus)} to different token ids",
            hint="channels move only between models that share a vocabulary (a base model "
                 "and its fine-tunes)")


def statistic(ctx: RunContext, op: O.Statistic, inputs: Inputs, cached: bool) -> Outcome:
    if not cached:
        (by_statistic,) = inputs.values()  # the capture that computed it
        return Outcome(by_statistic[op])
    value = ctx.cache.load("stats", ctx.plan.keys[op], S.ChannelStats.load)
    if value is None:
        raise RuntimeUserError("a cached statistic disappeared during the run",
                               hint="run again; it will be recomputed")
    return Outcome(value)


# ---- scores, selection, transfer --------------------------------------------------------------


def score(ctx: RunContext, op: O.Score, inputs: Inputs, cached: bool) -> Outcome:
    """A rule's channel scores, computed as the registry declares the score."""
    from actlang.run import scores as R

    method = SCORES[op.score.name]
    space = ctx.space(op.target)
    if method.inputs == "none":
        return Outcome(R.random_scores(space, op.score.seed))
    if method.inputs == "weights":
        scores = R.weight_delta_scores(space, ctx.checkpoint(op.donor), ctx.checkpoint(op.target),
                                       _selectable(ctx, op))
        return Outcome(scores.normalized("zscore" if op.normalize == "zscore" else None))

    def on(corpus: P.Corpus) -> Scores:
        # Rules that differ only in what they may select share this score op; each of their
        # statistics is a predecessor. Together they cover every module any of them hooked.
        found: dict[tuple[P.ModelSpec, P.ModelSpec | None], S.ChannelStats] = {}
        for s, v in sorted(inputs.items(), key=lambda item: O.op_id(item[0])):
            if s.corpus == corpus:
                pair = (s.model, s.partner)
                found[pair] = found[pair].cover(v) if pair in found else v
        if method.inputs == "paired":
            return R.compute_scores(method.name, paired=found[(op.target, op.donor)],
                                    normalize=op.normalize)
        return R.compute_scores(method.name, a=found[(op.target, None)],
                                b=found[(op.donor, None)], normalize=op.normalize)

    scores = on(op.ability.probe)
    if op.contrast > 0:
        assert op.ability.control is not None, "the checker requires a control corpus"
        scores = R.contrastive(scores, on(op.ability.control), op.contrast)
    return Outcome(scores)


def _selectable(ctx: RunContext, op: O.Score) -> list[Entry]:
    """The entries any rule sharing this score may select: what a weight score reads
    (embeddings and the output head, the largest tensors, only when a rule names them)."""
    space = ctx.space(op.target)
    keys = {e.key for select in ctx.plan.graph.successors(op) if isinstance(select, O.Select)
            for e in candidate_entries(space, select.rule, warn=False)}
    return [e for e in space if e.key in keys]


def select(ctx: RunContext, op: O.Select, inputs: Inputs, cached: bool) -> Outcome:
    """Select a rule's channels; by default only channels whose parameters differ."""
    from actlang.run.scores import changed_channels, restrict
    from actlang.run.select import select_channels

    rule = op.rule
    space = ctx.space(op.scores.target)
    scores = inputs[op.scores]
    entries = candidate_entries(space, rule, warn=False)  # the plan warned
    # a weight score found which channels differ in the same read of the weights
    changed = restrict(scores.changed, entries) if scores.changed is not None else None
    if changed is None:
        changed = changed_channels(space, ctx.checkpoint(rule.donor),
                                   ctx.checkpoint(op.scores.target), entries)
    maximum = rule.max_per_module
    mask = select_channels(
        scores, space, runtime_budget(rule.budget), entries=entries,
        granularity=rule.granularity,
        tie=None if rule.tie == "none" else rule.tie, min_per_module=rule.min_per_module,
        max_per_module=None if maximum is None else
        (maximum.value if maximum.kind == "fraction" else int(maximum.value)),
        changed=changed if rule.skip_identical else None)
    moving = sum(int((mask.selected(key) & differs).sum()) for key, differs in changed[0].items()
                 if key in mask.channels)
    ranked = None if SCORES[rule.score.name].inputs == "none" else scores
    # per kind, raw entries each by name: what moved, readable without the mask file
    per_kind = {kind: counts["selected"] for kind, counts in mask.summary()["per_kind"].items()
                if counts["selected"]}
    details = {"channels_selected": mask.n_channels, "channels_moving": moving,
               "selected_per_kind": per_kind}
    if mask.meta["units_short"]:
        details["units_short"] = mask.meta["units_short"]
    if mask.n_channels == 0:
        details["selected_nothing"] = True
    return Outcome(Selected(mask, ranked, moving), details)


def transfer(ctx: RunContext, op: O.Transfer, inputs: Inputs, cached: bool) -> Outcome:
    from actlang.run.output import model_card_name
    from actlang.run.transfer import Donor
    from actlang.run.transfer import transfer as transfer_files

    out = ctx.work / O.op_id(op)
    selections = tuple((select_op, inputs[select_op]) for select_op, _ in op.selections)
    donors = [Donor(ctx.checkpoint(s.rule.donor), selected.mask, lam, name=s.rule.donor.name)
              for (s, selected), (_, lam) in zip(selections, op.selections)]
    target = ctx.checkpoint(op.target)
    total = len(target.keys())
    count = 0

    def advance(_: str) -> None:
        nonlocal count
        count += 1
        ctx.progress.advance(count, total)

    models = [op.target, *(s.rule.donor for s, _ in op.selections)]
    report = transfer_files(target, donors, out, overlap=op.overlap, overwrite=True,
                            spec_text=ctx.spec_text,
                            base_models=[model_card_name(m) for m in dict.fromkeys(models)],
                            tags=["actlang", "act", "ability-transfer"], progress=advance)
    summary = {"channels_selected": [selected.mask.n_channels for _, selected in selections],
               "channels_moving": [selected.moving for _, selected in selections],
               "parameters_changed": report.elements_moved,
               "tensors_changed": len(report.tensors_changed)}
    return Outcome(Stage(out, selections, summary), summary)


def merge(ctx: RunContext, op: O.MergeModels, inputs: Inputs, cached: bool) -> Outcome:
    from actlang.run.merge import merge_models

    rule = op.merge
    out = ctx.work / O.op_id(op)
    report = merge_models(
        rule.method, [ctx.checkpoint(d) for d in rule.donors], out,
        base=ctx.checkpoint(rule.base) if rule.base else None,
        weights=list(rule.weights) if rule.weights else None, density=rule.density,
        lambda_=rule.lambda_, normalize=rule.normalize, rescale=rule.rescale,
        seed=rule.seed, target=ctx.checkpoint(op.target), overwrite=True,
        spec_text=ctx.spec_text)
    summary = {"merge": rule.method, "report": report.to_json()}
    return Outcome(Stage(out, (), summary), summary)


def finetune(ctx: RunContext, op: O.Finetune, inputs: Inputs, cached: bool) -> Outcome:
    from actlang.run.finetune import finetune as train
    from actlang.run.output import (
        checkpoint_state,
        finetune_description,
        save_state_dict,
    )

    source: Stage = inputs[op.source]
    model = ctx.load(source.directory, op.source.target)
    spec = op.spec
    data = ctx.data(spec.data, op.source.target)
    check_token_ids((ids for ids, _ in data.sequences), model,
                    f"the fine-tune corpus {O.corpus_label(spec.data)}", op.source.target.name)
    report = train(model, ctx.tokenizer(source.directory), data,
                   steps=spec.steps, lr=spec.lr, batch_size=spec.batch_size, seed=spec.seed,
                   scope=spec.scope, masks=[selected.mask for _, selected in source.selections],
                   weight_decay=spec.weight_decay,
                   progress=lambda step, loss: ctx.progress.advance(step, spec.steps))
    out = ctx.work / O.op_id(op)
    masks = source.directory / "masks"
    extras = {str(p.relative_to(source.directory)): p for p in masks.glob("*")} \
        if masks.is_dir() else {}
    state = checkpoint_state(model, source.directory,
                             set(ctx.space(op.source.target).tensors()))
    save_state_dict(out, state, source_dir=source.directory, overwrite=True,
                    spec_text=ctx.spec_text, extra_files=extras,
                    tags=["actlang", "act", "ability-transfer"],
                    description=finetune_description(spec.steps, spec.scope))
    losses = list(getattr(report, "losses", []))
    details = {"steps": spec.steps, "scope": spec.scope,
               "loss_first": losses[0] if losses else None,
               "loss_last": losses[-1] if losses else None}
    return Outcome(Stage(out, source.selections, source.summary), details)


# ---- evaluation and outputs -------------------------------------------------------------------


def evaluate(ctx: RunContext, op: O.Evaluate, inputs: Inputs, cached: bool) -> Outcome:
    from actlang.run.evaluate import exact_match, perplexity

    key = ctx.plan.keys.get(op)
    if cached:
        value = ctx.cache.load_json(key) if key else None
        if value is None:
            raise RuntimeUserError("a cached evaluation disappeared during the run",
                                   hint="run again; it will be recomputed")
        return Outcome(value, value)
    (state_result,) = inputs.values()  # the loaded input model, or a stage
    directory = state_result.directory if isinstance(state_result, Stage) else \
        ctx.directory(op.state)
    model = ctx.model_of(op.state, directory)
    tokenizer = ctx.tokenizer(directory)
    metrics: dict[str, float] = {}
    for spec in op.ability.evals:
        if isinstance(spec, P.ExactMatchEval):
            assert isinstance(spec.corpus, (P.ZooCorpus, P.JsonlCorpus)), \
                "the checker allows exact_match on zoo and jsonl corpora only"
            jsonl = ctx.jsonl(spec.corpus)
            records = jsonl_records(jsonl.path, limit=spec.corpus.options.limit,
                                    seed=spec.corpus.options.seed)
            metrics.setdefault("exact_match", exact_match(
                model, tokenizer, records, jsonl.prompt, jsonl.answer, spec.max_new_tokens))
        else:
            documents = ctx.documents(spec.corpus)
            metrics.setdefault("perplexity", perplexity(model, tokenizer,
                                                        [d.text for d in documents]))
    if key is not None:
        ctx.cache.store_json(key, metrics)
    return Outcome(metrics, metrics)


def save(ctx: RunContext, op: O.Save, inputs: Inputs, cached: bool) -> Outcome:
    """Move a finished stage into place with run_results.json and the report, atomically."""
    from actlang.run.output import atomic_output_dir, retitle_model_card

    surgery = op.surgery
    if cached:  # up to date: made from the same inputs by an earlier run
        previous = json.loads((Path(surgery.output) / "run_results.json").read_text())
        return Outcome(SurgeryResult.from_json(surgery, previous),
                       {"output": surgery.output, "up_to_date": True})
    stage: Stage = inputs[op.state]
    measured = {(e.ability, e.state): metrics for e, metrics in inputs.items()
                if isinstance(e, O.Evaluate)}
    stages = _stages(op)
    evals = _eval_table(surgery, stages, measured)
    gates = [_gate(e, stages, measured) for e in surgery.expects]
    result = SurgeryResult(surgery, Path(surgery.output), evals, gates, stage.summary)
    ancestors = _ancestors(ctx, op)
    payload = result.to_json(
        key=ctx.plan.keys.get(op), counters=S.COUNTERS.to_json(),
        warnings=[w.message for w in ctx.plan.warnings
                  if w.span in {t.span for t in surgery.transfers}],
        ops=[ctx.records[o] for o in ctx.plan.order if o in ancestors and o in ctx.records])
    # A stage the run wrote (in its work directory, removed when the run ends) is linked
    # into place, not copied: its files are complete and nothing writes them again. Anything
    # else (an input model's own files) is copied, so that the output shares nothing with it.
    place = _link_or_copy if _is_within(stage.directory, ctx.work) else shutil.copy2
    with atomic_output_dir(surgery.output, overwrite=ctx.force) as tmp:
        for item in stage.directory.iterdir():
            if item.is_dir():
                shutil.copytree(item, tmp / item.name, copy_function=place)
            else:
                place(item, tmp / item.name)
        (tmp / "run_results.json").unlink(missing_ok=True)  # never written through a link
        (tmp / "run_results.json").write_text(json.dumps(payload, indent=2) + "\n")
        if (tmp / "README.md").is_file():  # the stage's card is titled by its op id
            retitle_model_card(tmp / "README.md", _title(surgery))
        _report(ctx, tmp, surgery, stage, evals, gates)
    return Outcome(result, {"output": surgery.output})


def _is_within(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def _link_or_copy(source: str | Path, destination: str | Path) -> None:
    """A hard link (no bytes copied: a 1.35 GB model took 5 s of system time to copy), or a
    copy where the file system cannot link (another device, no hard links)."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _title(surgery: P.SurgerySpec) -> str:
    """A model card's title: the surgery, and the sweep point of a swept one."""
    point = ", ".join(f"{k}={v}" for k, v in surgery.sweep_point)
    return f"{surgery.name} ({point})" if point else surgery.name


def _ancestors(ctx: RunContext, op: O.Op) -> set[O.Op]:
    import networkx as nx

    return nx.ancestors(ctx.plan.graph, op) | {op}


def _report(ctx: RunContext, directory: Path, surgery: P.SurgerySpec, stage: Stage,
            evals: dict, gates: list[GateResult]) -> None:
    """report.md / report.html / plots: tables, channel maps, score CCDFs, overlaps."""
    from actlang.run.report import Selection, write_report

    selections = [Selection(f"{s.rule.ability.name} from {s.rule.donor.name}",
                            s.rule.ability.name, selected.mask, selected.scores,
                            truth=_truth(ctx, s.rule.truth), moving=selected.moving)
                  for s, selected in stage.selections]
    donors = {s.rule.ability.name: f"donor ({s.rule.donor.name})" for s, _ in stage.selections}
    write_report(directory, title=surgery.name + "".join(
                     f" {k}={v}" for k, v in surgery.sweep_point),
                 spec_name=ctx.plan.program.file, evals=evals, selections=selections,
                 space=ctx.space(surgery.target), gates=[g.to_json() for g in gates],
                 specialists=donors if len(set(donors.values())) > 1 else None)


def _truth(ctx: RunContext, truth: str | P.ZooTruth | None) -> dict[str, list[int]] | None:
    if truth is None:
        return None
    if isinstance(truth, P.ZooTruth):
        return built_zoo(zoo_ref(truth), ctx.cache).ground_truth()["damage"]
    try:
        return json.loads(Path(truth).read_text())
    except (OSError, ValueError) as error:
        raise RuntimeUserError(f"cannot read the ground truth {truth}: {error}") from None


# ---- the before/after table and gates ---------------------------------------------------------

Measured = dict[tuple[P.AbilitySpec, O.ModelState], dict[str, float]]


def _stages(save_op: O.Save) -> dict[str, O.ModelState]:
    output = save_op.state
    transferred = output.source if isinstance(output, O.Finetune) else output
    return {"target": save_op.surgery.target, "transferred": transferred, "output": output}


def _measure(measured: Measured, ability: P.AbilitySpec, state: O.ModelState) -> float | None:
    """An ability's primary metric (its first eval) on a state, if it was evaluated."""
    metrics = measured.get((ability, state))
    return next(iter(metrics.values())) if metrics else None


def _eval_table(surgery: P.SurgerySpec, stages: dict[str, O.ModelState],
                measured: Measured) -> dict[str, dict[str, float]]:
    donors = [t.donor for t in surgery.transfers] or \
        (list(surgery.merge.donors) if surgery.merge else [])
    columns: dict[str, O.ModelState] = {f"target ({surgery.target.name})": surgery.target}
    for donor in donors:
        columns[f"donor ({donor.name})"] = donor
    merged = isinstance(stages["transferred"], O.MergeModels)  # a whole-model baseline
    columns["after merge" if merged else "after transfer"] = stages["transferred"]
    if stages["output"] is not stages["transferred"]:
        columns["after finetune"] = stages["output"]
    table: dict[str, dict[str, float]] = {}
    for ability in surgery.evals:
        row = {name: _measure(measured, ability, state) for name, state in columns.items()}
        table[ability.name] = {k: v for k, v in row.items() if v is not None}
    return table


def _gate(expectation: P.Expectation, stages: dict[str, O.ModelState],
          measured: Measured) -> GateResult:
    def value(q: P.Quantity) -> float:
        if isinstance(q, P.Number):
            return q.value
        if isinstance(q, P.Measure):
            state = stages[q.on] if isinstance(q.on, str) else q.on
            found = _measure(measured, q.ability, state)
            assert found is not None, "the plan evaluates every measured ability"
            return found
        left, right = value(q.left), value(q.right)
        return {"+": left + right, "-": left - right, "*": left * right,
                "/": left / right if right else float("inf")}[q.op]

    left, right = value(expectation.left), value(expectation.right)
    passed = {">=": left >= right, "<=": left <= right, ">": left > right,
              "<": left < right, "==": left == right, "!=": left != right}[expectation.op]
    return GateResult(expectation.source, left, right, passed)


HANDLERS: dict[type, Handler] = {
    O.LoadModel: load, O.Capture: capture, O.Statistic: statistic, O.Score: score,
    O.Select: select, O.Transfer: transfer, O.MergeModels: merge, O.Finetune: finetune,
    O.Evaluate: evaluate, O.Save: save,
}
