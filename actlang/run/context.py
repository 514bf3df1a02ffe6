"""What the op handlers of one run share: the plan, the cache, models in memory, tokenized
corpora, the work directory and the progress sink.

Handlers (:mod:`actlang.run.handlers`) get their inputs from their graph predecessors; this
context holds only what is not an op result — resources that are opened once per run.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from actlang.arch import corpus as C
from actlang.arch.adapters import ChannelSpace
from actlang.arch.corpus import TokenizedCorpus
from actlang.arch.errors import RuntimeUserError
from actlang.compile import ops as O
from actlang.compile.bind import runtime_corpus
from actlang.compile.cache import Cache
from actlang.compile.plan import Plan
from actlang.compile.resolve import zoo_corpus
from actlang.lang import program as P
from actlang.run.checkpoint import Checkpoint
from actlang.run.ranks import SINGLE, Ranks
from actlang.run.results import OpRecord


class Progress:
    """What the executor reports; the default reports nothing.

    ``op_started`` / ``op_finished`` bracket each op; ``advance(done, total)`` reports work
    inside the current op (batches, tensors, steps)."""

    def op_started(self, index: int, count: int, op: O.Op) -> None: ...

    def advance(self, done: int, total: int | None) -> None: ...

    def op_finished(self, op: O.Op, status: str, seconds: float) -> None: ...


@dataclass
class RunContext:
    """Shared state of one run.

    Args:
        plan: the plan being run (resolved models, cache keys, order).
        cache: statistics and evaluations are read and written here.
        work: a hidden directory beside the outputs for stages in progress.
        spec_text: the spec, embedded in every output's model card.
        force: replace existing outputs.
        progress: receives progress events.
        ranks: the run's processes (captures are split between them; rank 0 does the rest).
    """

    plan: Plan
    cache: Cache
    work: Path
    spec_text: str = ""
    force: bool = False
    progress: Progress = field(default_factory=Progress)
    device: torch.device = field(default_factory=lambda: torch.device(
        "cuda" if torch.cuda.is_available() else "cpu"))
    loaded: dict[str, torch.nn.Module] = field(default_factory=dict)
    ranks: Ranks = SINGLE
    records: dict[O.Op, OpRecord] = field(default_factory=dict)
    _tokenized: dict[tuple[P.Corpus, P.ModelSpec], TokenizedCorpus] = field(default_factory=dict)
    _stage_model: tuple[Path, torch.nn.Module] | None = None

    # -- models

    def directory(self, model: P.ModelSpec) -> Path:
        directory = self.plan.models[model.name].directory
        assert directory is not None, "run plans resolve every model"
        return directory

    def space(self, model: P.ModelSpec) -> ChannelSpace:
        space = self.plan.models[model.name].space
        assert space is not None, "run plans know every model's channel space"
        return space

    def checkpoint(self, model: P.ModelSpec) -> Checkpoint:
        """The model's weights, opened with the permission its spec gives (pickle or not)."""
        return Checkpoint.open(self.directory(model), allow_pickle=model.allow_pickle)

    def dtype(self, spec: P.ModelSpec | None) -> torch.dtype:
        """What a model computes in (:attr:`~actlang.lang.program.ModelSpec.compute_dtype`:
        the spec's ``dtype``, or ``actc run --dtype``; float32 for ``auto``), on any device."""
        return getattr(torch, spec.compute_dtype) if spec is not None else torch.float32

    def load(self, directory: Path, spec: P.ModelSpec | None,
             dtype: torch.dtype | None = None) -> torch.nn.Module:
        """A model in memory, on the run's device, in eval mode, computing in ``dtype``
        (default: its spec's)."""
        from transformers import AutoModelForCausalLM

        dtype = dtype or self.dtype(spec)
        spread = self._spread(spec, dtype)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                directory, dtype=dtype, trust_remote_code=self.trusts_code(directory, spec),
                use_safetensors=not (spec and spec.allow_pickle),
                **({"device_map": "auto"} if spread else {}))
        except pickle.UnpicklingError as error:  # weights_only refused an object
            reason = str(error).strip().splitlines()[-1].strip() or "not plain tensors"
            raise RuntimeUserError(
                f"cannot load the pickle checkpoint in {directory}: it holds objects other "
                f"than tensors, which actlang never unpickles ({reason})",
                hint="such a file can run code when loaded; convert a trusted copy to "
                     "safetensors (load it and save_pretrained() it)") from None
        except (OSError, ValueError) as error:
            raise RuntimeUserError(f"cannot load the model in {directory}: {error}") from None
        if spec is not None:  # NaN/Inf weights would poison every activation and score
            _require_finite_weights(model, spec.name, directory)
        return (model if spread else model.to(self.device)).eval()

    def _spread(self, spec: P.ModelSpec | None, dtype: torch.dtype) -> bool:
        """Whether a model is spread over this machine's GPUs (accelerate's
        ``device_map="auto"``): when it does not fit the free memory of one and there are
        several (one rank of several keeps to its own GPU). Hooks and statistics work
        whatever device a module sits on."""
        if self.device.type != "cuda" or self.ranks.distributed or torch.cuda.device_count() < 2:
            return False
        info = self.plan.models.get(spec.name) if spec is not None else None
        if info is None or info.parameters is None:
            return False
        size = info.parameters * torch.empty((), dtype=dtype).element_size()
        free, _ = torch.cuda.mem_get_info()
        return size > 0.8 * free  # room for the activations of a batch

    def model_of(self, state: O.ModelState, directory: Path) -> torch.nn.Module:
        """A model in memory for a state: a loaded input model, or a stage loaded from its
        work ``directory`` in its target's dtype (the last one is kept: evaluations of a
        stage are adjacent)."""
        if isinstance(state, P.ModelSpec):
            return self.loaded[state.name]
        if self._stage_model is None or self._stage_model[0] != directory:
            target = self.dtype(O.state_target(state))
            self._stage_model = (directory, self.load(directory, None, dtype=target))
        return self._stage_model[1]

    # -- tokenizers and data

    def trusts_code(self, directory: Path, spec: P.ModelSpec | None = None) -> bool:
        """Whether loading from ``directory`` may run the repository's own code: only when
        its model opts in (``trust_remote_code = true``) — for a stage in the work
        directory, when a model of the plan does. Always passed to transformers explicitly,
        so it never asks on the terminal."""
        if spec is not None:
            return spec.trust_remote_code
        for info in self.plan.models.values():
            if info.directory is not None and info.directory.resolve() == directory.resolve():
                return info.spec.trust_remote_code
        return directory.resolve().is_relative_to(self.work.resolve()) and any(
            info.spec.trust_remote_code for info in self.plan.models.values())

    def tokenizer(self, directory: Path) -> Any:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(
                directory, trust_remote_code=self.trusts_code(directory))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            # malformed tokenizer files surface as any of these inside transformers
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise RuntimeUserError(f"cannot load the tokenizer of {directory}: {reason}",
                                   hint="a model directory needs its tokenizer files "
                                   "(tokenizer.json, tokenizer_config.json) to run") from None

    # -- corpora

    def documents(self, corpus: P.Corpus) -> C.Corpus:
        """A corpus's documents; a zoo corpus reads the zoo the plan built."""
        documents = runtime_corpus(corpus, self.cache)
        if documents is None:
            raise zoo_changed_during_run()
        return documents

    def jsonl(self, corpus: P.ZooCorpus | P.JsonlCorpus) -> P.JsonlCorpus:
        """A question/answer corpus as the jsonl file it is (a zoo split: the zoo's file)."""
        if isinstance(corpus, P.JsonlCorpus):
            return corpus
        resolved = zoo_corpus(corpus, self.cache)
        if resolved is None:
            raise zoo_changed_during_run()
        return resolved

    def data(self, corpus: P.Corpus, tokenizer_model: P.ModelSpec) -> TokenizedCorpus:
        """A corpus tokenized by a model's tokenizer (once per run)."""
        key = (corpus, tokenizer_model)
        if key not in self._tokenized:
            documents = self.documents(corpus)
            tokenizer = self.tokenizer(self.directory(tokenizer_model))
            self._tokenized[key] = documents.tokenize(tokenizer,
                                                      max_length=corpus.options.max_tokens)
        return self._tokenized[key]


def zoo_changed_during_run() -> RuntimeUserError:
    """The plan built (or found) every zoo the run reads, so a zoo that is missing now was
    planned under another key: the key hashes actlang's zoo code and the cache root, so an
    upgrade of actlang, an edit of its zoo code or a move of ``ACTLANG_CACHE_DIR`` while the
    run was going changes it."""
    return RuntimeUserError(
        "the zoo this run reads is no longer where the plan found it: actlang's zoo code or "
        "the cache directory changed while the run was going",
        hint="run again: the new plan builds the zoo that this actlang needs (the finished "
        "steps stay cached)")


def _require_finite_weights(model: torch.nn.Module, name: str, directory: Path) -> None:
    """An input model with NaN or Inf weights gives NaN activations, scores and outputs:
    refuse it where it is loaded, naming the first tensor that holds them."""
    for tensor_name, tensor in model.named_parameters():  # buffers may hold -inf masks
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise RuntimeUserError(
                f"the model {name} ({directory}) has {bad:,} NaN/Inf values in tensor "
                f"{tensor_name}",
                hint="the checkpoint is broken (a diverged fine-tune, or a bad conversion); "
                     "use a finite checkpoint")


def quiet_libraries() -> None:
    """Our progress bars replace the libraries' own (which would interleave on stderr)."""
    import transformers

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
