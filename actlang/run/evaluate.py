"""Evaluation of causal language models: greedy exact match and perplexity.

Both functions take any ``transformers`` causal LM (``model(input_ids, attention_mask=...,
position_ids=..., past_key_values=..., use_cache=True)`` returning ``.logits`` and
``.past_key_values``) and its tokenizer; they run under ``torch.no_grad()``, put the model
in eval mode for the duration (restoring its previous mode) and are deterministic.

:func:`exact_match` — greedy generation, batched with left padding and explicit position ids
(so a padded item generates exactly what it would alone, up to float rounding):

* the prompt is tokenized with the tokenizer's special tokens (for the zoo: ``<bos>`` + words);
* with ``max_new_tokens=None`` each item generates exactly as many tokens as its answer has
  (``len(tok(prompt + " " + answer)) - len(tok(prompt))``, so BPE merges across the space are
  counted right) and matches iff those tokens decode to the answer;
* with an explicit ``max_new_tokens`` each item generates up to that many tokens, the text is
  cut at the first EOS, and it matches iff it equals the answer;
* texts are compared after ``" ".join(s.split())`` (whitespace normalised), nothing else.

:func:`perplexity` — ``exp(total NLL / total predicted tokens)`` over all texts, each
tokenized with special tokens; the first token of each text is context only.
"""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch

from actlang.run.corpus import check_token_ids

__all__ = ["exact_match", "exact_match_details", "perplexity", "greedy_generate"]


def _norm(s: str) -> str:
    return " ".join(s.split())


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0  # pragma: no cover


def greedy_generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    n_new: Sequence[int],
) -> list[list[int]]:
    """Greedy continuation of token-id prompts (one batch, left padded, KV cache).

    Item ``i`` gets ``n_new[i]`` new tokens (the batch runs to ``max(n_new)``; each item's
    output is cut to its own length).  EOS is not special here: callers cut at it.
    """
    if not prompts:
        return []
    device = _device(model)
    pad = _pad_id(tokenizer)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError("empty prompt")
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    steps = max(n_new)
    out = torch.empty((len(prompts), 0), dtype=torch.long, device=device)
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    past = None
    cur_ids, cur_pos = ids, positions
    for _ in range(steps):
        kwargs = {cache_kw: past} if past is not None else {}
        res = model(input_ids=cur_ids, attention_mask=mask, position_ids=cur_pos,
                    use_cache=True, **kwargs)
        past = getattr(res, "cache", None)
        if past is None:
            past = getattr(res, "past_key_values", None)
        nxt = res.logits[:, -1, :].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        ids = torch.cat([ids, nxt], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if past is None:  # a model without a KV cache: run the whole sequence again
            cur_ids, cur_pos = ids, positions
        else:
            cur_ids, cur_pos = nxt, positions[:, -1:]
    rows = out.tolist()
    return [row[:n] for row, n in zip(rows, n_new)]


def exact_match_details(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping[str, str]],
    prompt_field: str = "q",
    answer_field: str = "a",
    max_new_tokens: int | None = None,
    batch_size: int = 64,
) -> list[dict]:
    """Per-item results of :func:`exact_match`: ``{"prompt", "answer", "output", "match"}``."""
    prompts = [str(r[prompt_field]) for r in records]
    answers = [str(r[answer_field]) for r in records]
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    check_token_ids(prompt_ids, model, "the prompts to evaluate")
    if max_new_tokens is None:
        n_new = []
        for p, a, pid in zip(prompts, answers, prompt_ids):
            full = tokenizer(f"{p} {a}")["input_ids"]
            n_new.append(max(1, len(full) - len(pid)))
    else:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        n_new = [max_new_tokens] * len(prompts)
    eos = tokenizer.eos_token_id
    results: list[dict] = []
    with _eval_mode(model):
        # sort by prompt length so batches pad little; results go back in input order
        order = sorted(range(len(prompts)), key=lambda i: (len(prompt_ids[i]), i))
        outputs: dict[int, list[int]] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            gen = greedy_generate(model, tokenizer, [prompt_ids[i] for i in idx],
                                  [n_new[i] for i in idx])
            outputs.update(zip(idx, gen))
    for i, (p, a) in enumerate(zip(prompts, answers)):
        toks = outputs[i]
        if max_new_tokens is not None and eos is not None and eos in toks:
            toks = toks[: toks.index(eos)]
        text = tokenizer.decode(toks, skip_special_tokens=max_new_tokens is not None)
        results.append({"prompt": p, "answer": a, "output": text,
                        "match": _norm(text) == _norm(a)})
    return results


def exact_match(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping[str, str]],
    prompt_field: str = "q",
    answer_field: str = "a",
    max_new_tokens: int | None = None,
    batch_size: int = 64,
) -> float:
    """Share of ``records`` whose greedy continuation of ``record[prompt_field]`` is exactly
    ``record[answer_field]`` (see the module docstring for the precise rule). 0.0 if empty."""
    if not records:
        return 0.0
    det = exact_match_details(model, tokenizer, records, prompt_field, answer_field,
                              max_new_tokens, batch_size)
    return sum(r["match"] for r in det) / len(det)


def perplexity(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
) -> float:
    """Token-level perplexity of ``texts`` (``exp`` of the mean NLL over predicted tokens)."""
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    encoded = [e for e in encoded if len(e) >= 2]
    check_token_ids(encoded, model, "the texts to evaluate")
    if not encoded:
        raise ValueError("perplexity needs at least one text of two or more tokens")
    device = _device(model)
    pad = _pad_id(tokenizer)
    total_nll = 0.0
    total_tokens = 0
    with _eval_mode(model):
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start: start + batch_size]
            width = max(len(e) for e in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, e in enumerate(batch):  # right padding: positions are then 0..n-1
                ids[i, : len(e)] = torch.tensor(e)
                mask[i, : len(e)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tgt = ids[:, 1:]
            nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            m = mask[:, 1:].to(nll.dtype)
            total_nll += float((nll * m).sum().double())
            total_tokens += int(m.sum())
    return math.exp(total_nll / total_tokens)
