"""Padded batches of a tokenized corpus, as tensors.

Documents, loaders and tokenization live in :mod:`actlang.arch.corpus` (no torch: the
planner uses them); this module turns a :class:`~actlang.arch.corpus.TokenizedCorpus` into
right-padded :class:`Batch` es for forward passes::

    for batch in batches(tokenized, batch_size=8):
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from actlang.arch.corpus import TokenizedCorpus
from actlang.arch.errors import RuntimeUserError

__all__ = ["Batch", "batches", "check_token_ids"]


@dataclass(frozen=True)
class Batch:
    """One padded batch: ``input_ids`` / ``attention_mask`` (long) and ``score_mask`` (bool),
    all ``[batch, seq]``; ``score_mask`` is false on padding and on unscored tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    score_mask: torch.Tensor

    @property
    def n_scored(self) -> int:
        return int(self.score_mask.sum())

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.score_mask.to(device))


def batches(corpus: TokenizedCorpus, batch_size: int = 8,
            indices: range | None = None) -> Iterator[Batch]:
    """Right-padded batches of ``batch_size`` sequences, in corpus order; with ``indices``,
    only those batches (a rank's share: the others are never padded)."""
    if batch_size < 1:
        raise RuntimeUserError(f"batch_size must be >= 1, got {batch_size}")
    sequences = corpus.sequences
    starts = range(0, len(sequences), batch_size)
    for start in (starts if indices is None else starts[indices.start:indices.stop]):
        chunk = sequences[start : start + batch_size]
        width = max(len(i) for i, _ in chunk)
        ids = torch.full((len(chunk), width), corpus.pad_token_id, dtype=torch.long)
        att = torch.zeros((len(chunk), width), dtype=torch.long)
        score = torch.zeros((len(chunk), width), dtype=torch.bool)
        for r, (i, f) in enumerate(chunk):
            ids[r, : len(i)] = torch.tensor(i, dtype=torch.long)
            att[r, : len(i)] = 1
            score[r, : len(i)] = torch.tensor(f, dtype=torch.bool)
        yield Batch(ids, att, score)


def check_token_ids(sequences: Iterable[Sequence[int]], model: torch.nn.Module, what: str,
                    model_name: str | None = None) -> None:
    """Refuse token ids ``model``'s input embedding has no row for (the tokenizer does not
    belong to the model): fed to it, they would index past the embedding. ``what`` names
    the token ids in the message (``"the corpus probe.jsonl"``)."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embedding, "num_embeddings", None)
    if rows is None:
        return
    top = max((max(ids) for ids in sequences if len(ids)), default=-1)
    if top >= rows:
        model_words = f"the model {model_name}" if model_name else "the model"
        raise RuntimeUserError(
            f"{what} holds token id {top}, but the embedding of {model_words} has {rows:,} "
            f"rows (ids 0 to {rows - 1:,})",
            hint="the tokenizer has a larger vocabulary than the model: use the tokenizer "
                 "saved with the model")
