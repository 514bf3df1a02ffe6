"""Executing a plan: each op in the planned order, results cached, outputs written atomically.

:class:`Executor` walks ``plan.order``. Models load at their first use and are released after
their last; statistics come from the capture that computed them or from the cache (and are
stored there as soon as they exist, so an interrupted run resumes from them); transfers,
merges and fine-tunes write into a hidden work directory next to the outputs; ``save`` moves
a finished stage into place with ``run_results.json`` (and the report) — atomically, so an
interrupted run never leaves a directory that looks finished.

Progress goes to a :class:`Progress` (rich bars on stderr in the CLI); the clock is
injectable so tests can check timings without sleeping.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from actlang import __version__
from actlang.arch.errors import RuntimeUserError
from actlang.compile import ops as O
from actlang.compile.bind import candidate_entries, runtime_budget, runtime_corpus
from actlang.compile.cache import Cache
from actlang.compile.passes import last_uses
from actlang.compile.plan import Plan
from actlang.lang import program as P
from actlang.run import stats as S
from actlang.run.checkpoint import Checkpoint

RESULTS_FORMAT_VERSION = 1


class Progress:
    """What the executor reports; the default reports nothing.

    ``op_started`` / ``op_finished`` bracket each op; ``advance(total, done)`` reports work
    inside the current op (batches, tensors, steps)."""

    def op_started(self, index: int, count: int, op: O.Op) -> None: ...

    def advance(self, done: int, total: int | None) -> None: ...

    def op_finished(self, op: O.Op, status: str, seconds: float) -> None: ...


@dataclass
class OpRecord:
    id: str
    kind: str
    label: str
    status: str  # "done" or "cached"
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "label": self.label, "status": self.status,
                "cache_hit": self.status == "cached", "seconds": round(self.seconds, 4),
                **self.details}


@dataclass
class GateResult:
    condition: str
    left: float
    right: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {"condition": self.condition, "left": self.left, "right": self.right,
                "passed": self.passed, "margin": self.left - self.right}


@dataclass
class SurgeryResult:
    surgery: P.SurgerySpec
    output: Path
    evals: dict[str, dict[str, float]]  # ability -> column -> primary metric
    gates: list[GateResult]
    transfer: dict[str, Any]


@dataclass
class RunResult:
    records: list[OpRecord]
    surgeries: list[SurgeryResult]
    counters: dict[str, Any]

    @property
    def failed_gates(self) -> list[tuple[SurgeryResult, GateResult]]:
        return [(s, g) for s in self.surgeries for g in s.gates if not g.passed]


class Executor:
    """Runs a plan made with ``dry_run=False``.

    Args:
        plan: the plan (its order, cache keys and resolved models).
        cache: where statistics and evaluations are read and written.
        spec_text: the spec, embedded in each output's model card.
        force: replace existing outputs.
        progress: receives progress events.
        clock: returns seconds (``time.perf_counter`` by default).
    """

    def __init__(self, plan: Plan, cache: Cache, *, spec_text: str = "", force: bool = False,
                 progress: Progress | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.plan = plan
        self.cache = cache
        self.spec_text = spec_text
        self.force = force
        self.progress = progress or Progress()
        self.clock = clock
        self.values: dict[O.Op, Any] = {}
        self.loaded: dict[str, torch.nn.Module] = {}
        self.records: dict[O.Op, OpRecord] = {}
        self.results: list[SurgeryResult] = []
        self._tokenized: dict[tuple, Any] = {}
        self._stage_model: tuple[Path, torch.nn.Module] | None = None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        _quiet_libraries()

    # -- driver

    def run(self) -> RunResult:
        self._check_outputs()
        S.COUNTERS.reset()
        outputs = [Path(s.surgery.output) for s in self.plan.order if isinstance(s, O.Save)]
        self.work = _work_dir(outputs)
        last = last_uses(self.plan.graph, self.plan.order)  # models freed after that op
        try:
            for index, op in enumerate(self.plan.order):
                self.progress.op_started(index, len(self.plan.order), op)
                start = self.clock()
                cached = op in self.plan.cached
                details = self._execute(op, cached)
                record = OpRecord(O.op_id(op), op.kind, op.label,
                                  "cached" if cached else "done", self.clock() - start,
                                  details or {})
                self.records[op] = record
                self.progress.op_finished(op, record.status, record.seconds)
                for load, last_index in last.items():
                    if last_index == index:  # several models can end at one op (a capture)
                        self.loaded.pop(load.model.name, None)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        position = {s: i for i, s in enumerate(self.plan.program.surgeries)}
        return RunResult([self.records[op] for op in self.plan.order],
                         sorted(self.results, key=lambda r: position[r.surgery]),
                         self._counters())

    def _check_outputs(self) -> None:
        for op in self.plan.order:
            if isinstance(op, O.Save) and op not in self.plan.cached and \
                    Path(op.surgery.output).exists() and not self.force:
                made_here = (Path(op.surgery.output) / "run_results.json").is_file()
                raise RuntimeUserError(
                    f"output {op.surgery.output} already exists" +
                    (", made by an earlier run with other inputs" if made_here else ""),
                    hint="replace it with --force, or write elsewhere with --output")

    def _counters(self) -> dict[str, Any]:
        return {"forward_passes": S.COUNTERS.forward_passes,
                "forward_batches": S.COUNTERS.forward_batches,
                "tokens_scored": S.COUNTERS.tokens_scored,
                "passes_by_model_and_corpus": dict(sorted(S.COUNTERS.passes_by_label.items()))}

    def _execute(self, op: O.Op, cached: bool) -> dict[str, Any] | None:
        handler = getattr(self, f"_op_{op.kind}")
        return handler(op, cached) if op.kind in ("statistic", "eval", "save") else handler(op)

    # -- models and data

    def _directory(self, model: P.ModelSpec) -> Path:
        directory = self.plan.models[model.name].directory
        assert directory is not None, "run plans resolve every model"
        return directory

    def _checkpoint(self, model: P.ModelSpec) -> Checkpoint:
        """The model's weights, opened with the permission its spec gives (pickle or not)."""
        return Checkpoint.open(self._directory(model), allow_pickle=model.allow_pickle)

    def _load(self, directory: Path, spec: P.ModelSpec | None) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        dtype = torch.float32
        if spec is not None and spec.dtype != "auto" and self.device.type != "cpu":
            dtype = getattr(torch, spec.dtype)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                directory, dtype=dtype,
                trust_remote_code=bool(spec and spec.trust_remote_code),
                use_safetensors=not (spec and spec.allow_pickle))
        except (OSError, ValueError) as error:
            raise RuntimeUserError(f"cannot load the model in {directory}: {error}") from None
        return model.to(self.device).eval()

    def _tokenizer(self, directory: Path):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(directory)
        except (OSError, ValueError) as error:
            reason = str(error).strip().splitlines()[0]
            raise RuntimeUserError(f"cannot load the tokenizer of {directory}: {reason}",
                                   hint="a model directory needs its tokenizer files "
                                   "(tokenizer.json, tokenizer_config.json) to run") from None

    def _data(self, corpus: P.Corpus, tokenizer_model: P.ModelSpec):
        key = (corpus, tokenizer_model)
        if key not in self._tokenized:
            documents = runtime_corpus(corpus, self.cache)
            assert documents is not None
            tokenizer = self._tokenizer(self._directory(tokenizer_model))
            self._tokenized[key] = documents.tokenize(tokenizer,
                                                      max_length=corpus.options.max_tokens)
        return self._tokenized[key]

    def _space(self, model: P.ModelSpec):
        space = self.plan.models[model.name].space
        assert space is not None
        return space

    def _stage_directory(self, state: O.ModelState) -> Path:
        return self._directory(state) if isinstance(state, P.ModelSpec) else self.values[state]

    def _model_of(self, state: O.ModelState) -> torch.nn.Module:
        """A model in memory for a state: a loaded input model, or a stage loaded from its
        work directory (the last one is kept, since evaluations of a stage are adjacent)."""
        if isinstance(state, P.ModelSpec):
            return self.loaded[state.name]
        directory = self._stage_directory(state)
        if self._stage_model is None or self._stage_model[0] != directory:
            self._stage_model = (directory, self._load(directory, None))
        return self._stage_model[1]

    # -- ops

    def _op_load(self, op: O.LoadModel) -> None:
        self.loaded[op.model.name] = self._load(self._directory(op.model), op.model)

    def _op_capture(self, op: O.Capture) -> dict[str, Any]:
        data = self._data(op.corpus, op.tokenizer)
        space = self._space(op.models[0])
        wanted = set(op.statistics)
        entries = None if op.modules == "default" else [e for e in space if e.hook is not None]
        batches = data.n_batches()
        for models in op.passes():
            done = 0

            def advance(_: int) -> None:
                nonlocal done
                done += 1
                self.progress.advance(done, batches)

            labels = [f"{m.name} on {O.corpus_label(op.corpus)}" for m in models]
            if len(models) > 1:
                anchor, *partners = models
                results = S.collect_lockstep_stats(
                    self.loaded[anchor.name], [self.loaded[p.name] for p in partners], space,
                    data, entries=entries, labels=labels, progress=advance)
                produced = {(anchor, None): results[0].a}
                for partner, result in zip(partners, results):
                    produced[(partner, None)] = result.b
                    # Paired statistics are symmetric in |a - b|; the op names the pair as
                    # (model, partner) in either order.
                    produced[(anchor, partner)] = produced[(partner, anchor)] = result.paired
            else:
                (m,) = models
                produced = {(m, None): S.collect_stats(self.loaded[m.name], space, data,
                                                       entries=entries, label=labels[0],
                                                       progress=advance)}
            for statistic in wanted:
                value = produced.get((statistic.model, statistic.partner))
                if value is not None and statistic not in self.values:
                    self.values[statistic] = value
                    key = self.plan.keys.get(statistic)
                    if key is not None:
                        self.cache.store("stats", key, lambda path: value.save(path))
        return {"forward_passes": op.pass_count(), "tokens": data.n_tokens}

    def _op_statistic(self, op: O.Statistic, cached: bool) -> None:
        if not cached:
            assert op in self.values, "a statistic is computed by its capture"
            return
        value = self.cache.load("stats", self.plan.keys[op], S.ChannelStats.load)
        if value is None:
            raise RuntimeUserError("a cached statistic disappeared during the run",
                                   hint="run again; it will be recomputed")
        self.values[op] = value

    def _op_score(self, op: O.Score) -> None:
        from actlang.run import scores as R

        space = self._space(op.target)
        tokenizer = op.target
        normalize = None if op.normalize == "none" else op.normalize

        statistics = {s for s in self.values if isinstance(s, O.Statistic)}

        def read(model: P.ModelSpec, corpus: P.Corpus, partner: P.ModelSpec | None):
            # The widest statistics computed for this (model, corpus, partner).
            found = [s for s in statistics if (s.model, s.corpus, s.tokenizer, s.partner) ==
                     (model, corpus, tokenizer, partner)]
            assert found, "the plan computes every statistic a score reads"
            return self.values[max(found, key=lambda s: s.modules == "all")]

        def on(corpus: P.Corpus):
            if op.score.name == "paired_absdiff":
                paired = read(op.target, corpus, op.donor)
                return R.compute_scores("paired_absdiff", paired=paired, normalize=normalize)
            a, b = read(op.target, corpus, None), read(op.donor, corpus, None)
            return R.compute_scores(op.score.name, a=a, b=b, normalize=normalize)

        if op.score.name == "random":
            scores = R.random_scores(space, op.score.seed)
        elif op.score.name == "weight_delta":
            scores = R.weight_delta_scores(space, self._checkpoint(op.donor), self._checkpoint(op.target))
            scores = scores.normalized("zscore" if op.normalize == "zscore" else None)
        else:
            scores = on(op.ability.probe)
            if op.contrast > 0:
                assert op.ability.control is not None
                scores = R.contrastive(scores, on(op.ability.control), op.contrast)
        self.values[op] = scores

    def _op_select(self, op: O.Select) -> dict[str, Any]:
        from actlang.run.select import select_channels

        rule = op.rule
        space = self._space(op.scores.target)
        maximum = rule.max_per_module
        mask = select_channels(
            self.values[op.scores], space, runtime_budget(rule.budget),
            entries=candidate_entries(space, rule), granularity=rule.granularity,
            tie=None if rule.tie == "none" else rule.tie, min_per_module=rule.min_per_module,
            max_per_module=None if maximum is None else
            (maximum.value if maximum.kind == "fraction" else int(maximum.value)))
        self.values[op] = mask
        return {"channels_selected": mask.n_channels}

    def _op_transfer(self, op: O.Transfer) -> dict[str, Any]:
        from actlang.run.transfer import Donor, transfer

        out = self.work / O.op_id(op)
        donors = [Donor(self._checkpoint(select.rule.donor), self.values[select], lam,
                        name=select.rule.donor.name) for select, lam in op.selections]
        target = self._checkpoint(op.target)
        total = len(target.keys())
        count = 0

        def advance(_: str) -> None:
            nonlocal count
            count += 1
            self.progress.advance(count, total)

        models = [op.target, *(select.rule.donor for select, _ in op.selections)]
        report = transfer(target, donors, out, overlap=op.overlap,
                          overwrite=True, spec_text=self.spec_text,
                          base_models=[_card_name(m) for m in dict.fromkeys(models)],
                          tags=["actlang", "act", "ability-transfer"], progress=advance)
        self.values[op] = out
        return {"channels_selected": [self.values[s].n_channels for s, _ in op.selections],
                "parameters_changed": report.elements_moved,
                "tensors_changed": len(report.tensors_changed)}

    def _op_merge(self, op: O.MergeModels) -> dict[str, Any]:
        from actlang.run.merge import merge_models

        rule = op.merge
        out = self.work / O.op_id(op)
        report = merge_models(
            rule.method, [self._checkpoint(d) for d in rule.donors], out,
            base=self._checkpoint(rule.base) if rule.base else None,
            weights=list(rule.weights) if rule.weights else None, density=rule.density,
            lambda_=rule.lambda_, normalize=rule.normalize, rescale=rule.rescale,
            seed=rule.seed, target=self._checkpoint(op.target), overwrite=True,
            spec_text=self.spec_text)
        self.values[op] = out
        return {"merge": rule.method, "report": report.to_json()}

    def _op_finetune(self, op: O.Finetune) -> dict[str, Any]:
        from actlang.run.finetune import finetune
        from actlang.run.output import (
            ACT_DESCRIPTION,
            checkpoint_state,
            save_state_dict,
        )

        source = self.values[op.source]
        model = self._load(source, op.source.target)
        masks = [self.values[s] for s, _ in op.source.selections] \
            if isinstance(op.source, O.Transfer) else []
        spec = op.spec
        report = finetune(model, self._tokenizer(source), self._data(spec.data, op.source.target),
                          steps=spec.steps, lr=spec.lr, batch_size=spec.batch_size,
                          seed=spec.seed, scope=spec.scope, masks=masks,
                          weight_decay=spec.weight_decay,
                          progress=lambda step, loss: self.progress.advance(step, spec.steps))
        out = self.work / O.op_id(op)
        extras = {str(p.relative_to(source)): p for p in (source / "masks").glob("*")} \
            if (source / "masks").is_dir() else {}
        state = checkpoint_state(model, source, set(self.plan.models[op.source.target.name].space.tensors()))
        kept = "every other parameter is bit-identical to the target" \
            if spec.scope == "transferred" else "all parameters were trained"
        description = (f"{ACT_DESCRIPTION.split(';')[0]}; then a {spec.steps}-step "
                       f"compatibility fine-tune (scope {spec.scope}): {kept}.")
        save_state_dict(out, state, source_dir=source, overwrite=True, spec_text=self.spec_text,
                        extra_files=extras, tags=["actlang", "act", "ability-transfer"],
                        description=description)
        self.values[op] = out
        losses = list(getattr(report, "losses", []))
        return {"steps": spec.steps, "scope": spec.scope,
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None}

    def _op_eval(self, op: O.Evaluate, cached: bool) -> dict[str, Any]:
        key = self.plan.keys.get(op)
        if cached:
            value = self.cache.load_json(key) if key else None
            if value is None:
                raise RuntimeUserError("a cached evaluation disappeared during the run",
                                       hint="run again; it will be recomputed")
            self.values[op] = value
            return value
        from actlang.run.evaluate import exact_match, perplexity

        model = self._model_of(op.state)
        tokenizer = self._tokenizer(self._stage_directory(op.state))
        metrics: dict[str, float] = {}
        for spec in op.ability.evals:
            if isinstance(spec, P.ExactMatchEval):
                jsonl = _as_jsonl(spec.corpus, self.cache)
                metrics.setdefault("exact_match", exact_match(
                    model, tokenizer, _records(spec.corpus, self.cache), jsonl.prompt,
                    jsonl.answer, spec.max_new_tokens))
            else:
                documents = runtime_corpus(spec.corpus, self.cache)
                assert documents is not None
                metrics.setdefault("perplexity", perplexity(model, tokenizer,
                                                            [d.text for d in documents]))
        self.values[op] = metrics
        if key is not None:
            self.cache.store_json(key, metrics)
        return metrics

    def _op_save(self, op: O.Save, cached: bool) -> dict[str, Any]:
        from actlang.run.output import atomic_output_dir

        surgery = op.surgery
        if cached:  # up to date: made from the same inputs by an earlier run
            previous = json.loads((Path(surgery.output) / "run_results.json").read_text())
            gates = [GateResult(g["condition"], g["left"], g["right"], g["passed"])
                     for g in previous["gates"]]
            self.results.append(SurgeryResult(surgery, Path(surgery.output), previous["evals"],
                                              gates, previous["transfer"]))
            return {"output": surgery.output, "up_to_date": True}
        stage = self.values[op.state]
        evals = self._eval_table(surgery)
        gates = [self._gate(e, surgery) for e in surgery.expects]
        transfer = self.records[_stage_root(op.state)].details \
            if _stage_root(op.state) in self.records else {}
        result = SurgeryResult(surgery, Path(surgery.output), evals, gates, transfer)
        self.results.append(result)
        ancestors = _ancestors(self.plan, op)
        payload = {
            "format_version": RESULTS_FORMAT_VERSION, "actlang_version": __version__,
            "key": self.plan.keys.get(op), "surgery": surgery.name, "output": surgery.output,
            "sweep": dict(surgery.sweep_point),
            "ops": [self.records[o].to_json() for o in self.plan.order
                    if o in ancestors and o in self.records],
            "counters": self._counters(), "transfer": transfer, "evals": evals,
            "gates": [g.to_json() for g in gates],
        }
        with atomic_output_dir(surgery.output, overwrite=self.force) as tmp:
            for item in stage.iterdir():
                target = tmp / item.name
                if item.is_dir():
                    shutil.copytree(item, target)
                else:
                    shutil.copy2(item, target)
            (tmp / "run_results.json").write_text(json.dumps(payload, indent=2) + "\n")
            self._report(tmp, op, evals, gates)
        return {"output": surgery.output}

    def _report(self, directory: Path, op: O.Save, evals: dict, gates: list[GateResult]) -> None:
        """report.md / report.html / plots: tables, channel maps, score CCDFs, overlaps."""
        from actlang.run.report import Selection, write_report

        surgery = op.surgery
        root = _stage_root(op.state)
        selections = []
        if isinstance(root, O.Transfer):
            for select, _ in root.selections:
                rule = select.rule
                scores = None if rule.score.name == "random" else self.values[select.scores]
                selections.append(Selection(
                    f"{rule.ability.name} from {rule.donor.name}", rule.ability.name,
                    self.values[select], scores, truth=self._truth(rule.truth)))
        donors = {s.rule.ability.name: f"donor ({s.rule.donor.name})"
                  for s, _ in root.selections} if isinstance(root, O.Transfer) else {}
        write_report(directory, title=surgery.name + "".join(
                         f" {k}={v}" for k, v in surgery.sweep_point),
                     spec_name=self.plan.program.file, evals=evals, selections=selections,
                     space=self._space(surgery.target), gates=[g.to_json() for g in gates],
                     specialists=donors if len(set(donors.values())) > 1 else None)

    def _truth(self, truth: str | P.ZooTruth | None) -> dict[str, list[int]] | None:
        if truth is None:
            return None
        if isinstance(truth, P.ZooTruth):
            from actlang.compile.resolve import built_zoo, zoo_ref

            return built_zoo(zoo_ref(truth), self.cache).ground_truth()["damage"]
        try:
            return json.loads(Path(truth).read_text())
        except (OSError, ValueError) as error:
            raise RuntimeUserError(f"cannot read the ground truth {truth}: {error}") from None

    # -- evaluations and gates

    def _measure(self, ability: P.AbilitySpec, state: O.ModelState) -> float | None:
        metrics = self.values.get(O.Evaluate(ability, state))
        if not metrics:
            return None
        return next(iter(metrics.values()))

    def _stages(self, surgery: P.SurgerySpec) -> dict[str, O.ModelState]:
        save = next(op for op in self.plan.order
                    if isinstance(op, O.Save) and op.surgery == surgery)
        output = save.state
        transferred = output.source if isinstance(output, O.Finetune) else output
        return {"target": surgery.target, "transferred": transferred, "output": output}

    def _eval_table(self, surgery: P.SurgerySpec) -> dict[str, dict[str, float]]:
        stages = self._stages(surgery)
        donors = [t.donor for t in surgery.transfers] or \
            (list(surgery.merge.donors) if surgery.merge else [])
        columns: dict[str, O.ModelState] = {f"target ({surgery.target.name})": surgery.target}
        for donor in donors:
            columns[f"donor ({donor.name})"] = donor
        columns["after transfer"] = stages["transferred"]
        if stages["output"] is not stages["transferred"]:
            columns["after finetune"] = stages["output"]
        table: dict[str, dict[str, float]] = {}
        for ability in surgery.evals:
            row = {name: self._measure(ability, state) for name, state in columns.items()}
            table[ability.name] = {k: v for k, v in row.items() if v is not None}
        return table

    def _gate(self, expectation: P.Expectation, surgery: P.SurgerySpec) -> GateResult:
        stages = self._stages(surgery)

        def value(q: P.Quantity) -> float:
            if isinstance(q, P.Number):
                return q.value
            if isinstance(q, P.Measure):
                state = stages[q.on] if isinstance(q.on, str) else q.on
                measured = self._measure(q.ability, state)
                assert measured is not None, "the plan evaluates every measured ability"
                return measured
            left, right = value(q.left), value(q.right)
            return {"+": left + right, "-": left - right, "*": left * right,
                    "/": left / right if right else float("inf")}[q.op]

        left, right = value(expectation.left), value(expectation.right)
        passed = {">=": left >= right, "<=": left <= right, ">": left > right,
                  "<": left < right, "==": left == right, "!=": left != right}[expectation.op]
        return GateResult(expectation.source, left, right, passed)


def _quiet_libraries() -> None:
    """Our progress bars replace the libraries' own (which would interleave on stderr)."""
    import transformers

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _card_name(model: P.ModelSpec) -> str:
    """How a model card's ``base_model`` names an input: the hub id, or the local path."""
    return model.location if model.source != "zoo" else f"actlang-zoo/{model.location}"


def _stage_root(state: O.ModelState) -> O.Op:
    return state.source if isinstance(state, O.Finetune) else state  # type: ignore[return-value]


def _ancestors(plan: Plan, op: O.Op) -> set[O.Op]:
    import networkx as nx

    return nx.ancestors(plan.graph, op) | {op}


def _as_jsonl(corpus: P.Corpus, cache: Cache) -> P.JsonlCorpus:
    from actlang.compile.resolve import zoo_corpus

    if isinstance(corpus, P.ZooCorpus):
        resolved = zoo_corpus(corpus, cache)
        assert resolved is not None
        return resolved
    assert isinstance(corpus, P.JsonlCorpus), "the checker allows exact_match on jsonl only"
    return corpus


def _records(corpus: P.Corpus, cache: Cache) -> list[dict[str, Any]]:
    """The records of a jsonl eval corpus, with its limit and seed applied."""
    from actlang.arch.corpus import jsonl_records

    options = corpus.options
    return jsonl_records(_as_jsonl(corpus, cache).path, limit=options.limit, seed=options.seed)


def _work_dir(outputs: list[Path]) -> Path:
    """A hidden work directory beside the first output; stale ones of dead runs go first."""
    parent = (outputs[0].parent if outputs else Path.cwd()).absolute()
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(".actc-work-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    work = parent / f".actc-work-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    return work


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
