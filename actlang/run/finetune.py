"""The compatibility fine-tune: a few AdamW steps after a transfer, optionally masked.

    report = finetune(model, tokenizer, data, steps=100, lr=1e-5, scope="transferred",
                      masks=[mask])

After channels move from a donor into a target, the moved parameters and the rest of the
network were trained apart; a short fine-tune on a small mixture of ability and retained-skill
data lets them adapt to each other (the paper's "compatibility fine-tune").

Scopes:

* ``transferred`` — only the elements selected by the union of ``masks`` may change (the
  mask's :meth:`~actlang.run.mask.ChannelMask.element_mask` of each parameter, by
  state-dict name). Every other element stays **bit-identical**: parameters with no selected
  element get ``requires_grad=False`` and are left out of the optimizer; in the others a
  gradient hook zeroes the gradient outside the mask (so Adam's moments stay exactly zero
  there and its update is exactly zero), weight decay is applied by hand on the mask only
  (the optimizer's own ``weight_decay`` is 0), and after each step the unselected elements
  are restored from their original values by a select (``torch.where``) — a guard that also
  holds when flush-to-zero would otherwise touch a denormal weight. A parameter shared by
  several names (``lm_head`` tied to the embedding) trains on the union of their masks.
* ``full`` — every parameter trains (AdamW with decoupled ``weight_decay``).
* ``none`` — nothing happens (an empty report).

Loss: the causal-LM cross-entropy averaged over every next-token prediction whose target is
a real (non-padding) token — *all* tokens of the mixture, not only a corpus' scored spans:
the fine-tune restores the compatibility of the network on whole documents of the ability
and of the retained skills, and scored spans are a notion of the probes, not of training data.

Batches: each epoch is a permutation of the corpus drawn from ``torch.Generator(seed)``;
batches take ``batch_size`` consecutive sequences of that order (the last batch of an epoch
may be smaller), cycling through as many epochs as ``steps`` need. Everything is seeded
(dropout runs under a forked RNG seeded by ``seed``; the global RNG is left as it was), so on
CPU the same inputs give bit-identical weights. ``torch.set_flush_denormal(True)`` is set while
training (Adam's moments of rarely-updated elements otherwise decay into denormals and slow CPU
training ~10×) and reset to the process default, off, afterwards (the setting cannot be read
back, and code after training — hypothesis, for one — needs denormals).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from actlang.arch.corpus import TokenizedCorpus
from actlang.arch.errors import RuntimeUserError
from actlang.run.corpus import batches
from actlang.run.mask import ChannelMask

__all__ = ["FINETUNE_SCOPES", "FinetuneReport", "causal_lm_loss", "finetune", "trainable_masks"]

FINETUNE_SCOPES = ("transferred", "full", "none")


@dataclass
class FinetuneReport:
    """What a fine-tune did."""

    scope: str
    steps: int = 0
    lr: float = 0.0
    batch_size: int = 0
    seed: int = 0
    weight_decay: float = 0.0
    losses: list[float] = field(default_factory=list)
    parameters_trainable: int = 0  # parameter tensors that may change
    elements_trainable: int = 0  # scalar elements that may change
    elements_total: int = 0
    tokens_seen: int = 0  # target tokens the loss was taken over, all steps
    seconds: float = 0.0

    @property
    def loss_first(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def loss_last(self) -> float | None:
        return self.losses[-1] if self.losses else None

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "steps": self.steps,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "weight_decay": self.weight_decay,
            "loss_first": self.loss_first,
            "loss_last": self.loss_last,
            "losses": self.losses,
            "parameters_trainable": self.parameters_trainable,
            "elements_trainable": self.elements_trainable,
            "elements_total": self.elements_total,
            "fraction_trainable": self.elements_trainable / self.elements_total if self.elements_total else 0.0,
            "tokens_seen": self.tokens_seen,
            "seconds": self.seconds,
        }


def _unique_parameters(model: nn.Module) -> list[tuple[nn.Parameter, list[str]]]:
    """Each distinct parameter with every name it has (tied weights have several)."""
    by_id: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), (p, []))[1].append(name)
    return list(by_id.values())


def trainable_masks(model: nn.Module, masks: Sequence[ChannelMask]) -> dict[str, torch.Tensor]:
    """Per parameter (first name), the bool element mask of what may train: the union over
    ``masks`` and over every name the parameter has. Parameters with nothing selected are
    absent. Raises :class:`RuntimeUserError` when a mask names a tensor the model lacks or
    does not fit its shape."""
    from actlang.arch.adapters import checkpoint_naming

    to_checkpoint = checkpoint_naming(model).to_checkpoint
    params = _unique_parameters(model)
    known = {to_checkpoint(n) for _, names in params for n in names}
    known |= {to_checkpoint(n) for n in model.state_dict()}
    for m in masks:
        for name in m.tensor_names():
            if name not in known:
                raise RuntimeUserError(f"the fine-tune mask names tensor {name}, which is not in the model",
                                       hint="the mask was made for another model")
    out: dict[str, torch.Tensor] = {}
    for p, names in params:
        acc: torch.Tensor | None = None
        for name in names:
            for m in masks:
                em = m.element_mask(to_checkpoint(name), tuple(p.shape))
                if em is not None:
                    acc = em.clone() if acc is None else (acc | em)
        if acc is not None and bool(acc.any()):
            out[names[0]] = acc
    return out


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over targets that are real tokens; ``(loss, n targets)``."""
    pred = logits[:, :-1, :].float()
    tgt = input_ids[:, 1:]
    keep = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    n = int(keep.sum())
    if n == 0:
        return pred.sum() * 0.0, 0
    loss = nn.functional.cross_entropy(pred[keep], tgt[keep], reduction="mean")
    return loss, n


def _check(steps: int, lr: float, batch_size: int, scope: str, weight_decay: float, data: Any) -> None:
    if scope not in FINETUNE_SCOPES:
        raise RuntimeUserError(f"unknown fine-tune scope {scope!r}", hint=f"scopes: {', '.join(FINETUNE_SCOPES)}")
    if scope == "none":
        return
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise RuntimeUserError(f"fine-tune steps must be an integer >= 1, got {steps!r}",
                               hint="use scope = none to skip the fine-tune")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise RuntimeUserError(f"fine-tune lr must be a positive number, got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RuntimeUserError(f"fine-tune batch_size must be an integer >= 1, got {batch_size!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise RuntimeUserError(f"fine-tune weight_decay must be >= 0, got {weight_decay!r}")
    if not isinstance(data, TokenizedCorpus):
        raise RuntimeUserError(f"fine-tune data must be a tokenized corpus, got {type(data).__name__}")
    if len(data) == 0 or not any(len(ids) >= 2 for ids, _ in data.sequences):
        raise RuntimeUserError(f"the fine-tune corpus {data.name} has no sequence of 2 or more tokens",
                               hint="a causal-LM loss needs at least one next-token prediction")


def _batch_order(n: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(int(seed))
    out: list[list[int]] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=g).tolist()
        for start in range(0, n, batch_size):
            out.append(perm[start : start + batch_size])
            if len(out) == steps:
                break
    return out


def finetune(
    model: nn.Module,
    tokenizer: Any,
    data: TokenizedCorpus,
    *,
    steps: int,
    lr: float,
    batch_size: int = 8,
    seed: int = 0,
    scope: str = "transferred",
    masks: Sequence[ChannelMask] = (),
    weight_decay: float = 0.0,
    progress: Callable[[int, float], None] | None = None,
) -> FinetuneReport:
    """Fine-tune ``model`` in place on ``data`` (see the module docs); returns the report.

    ``tokenizer`` is accepted for symmetry with the other runtime calls (``data`` is already
    tokenized; its ``pad_token_id`` pads the batches). ``progress(step, loss)`` is called
    after every step (``step`` from 1). The model's train/eval mode and every parameter's
    ``requires_grad`` are restored afterwards.
    """
    _check(steps, lr, batch_size, scope, float(weight_decay), data)
    report = FinetuneReport(scope=scope, lr=float(lr), batch_size=batch_size, seed=int(seed),
                            weight_decay=float(weight_decay))
    params = _unique_parameters(model)
    report.elements_total = sum(p.numel() for p, _ in params)
    if scope == "none":
        return report

    elem_masks: dict[str, torch.Tensor] = {}
    if scope == "transferred":
        masks = list(masks)
        if not masks or all(m.is_empty() for m in masks):
            raise RuntimeUserError("a fine-tune with scope = transferred needs a non-empty mask",
                                   hint="nothing was transferred; use scope = full or none")
        elem_masks = trainable_masks(model, masks)
        if not elem_masks:
            raise RuntimeUserError("the transferred channels select no parameter of the model",
                                   hint="the mask was made for another model")

    saved_grad = {id(p): p.requires_grad for p, _ in params}
    was_training = model.training
    hooks: list[Any] = []
    # (parameter, element mask on its device, original values) for partially trainable ones
    partial: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
    trainable: list[nn.Parameter] = []
    for p, names in params:
        if scope == "full":
            p.requires_grad_(True)
            trainable.append(p)
            continue
        m = elem_masks.get(names[0])
        if m is None:
            p.requires_grad_(False)
            continue
        p.requires_grad_(True)
        trainable.append(p)
        if bool(m.all()):
            continue
        m_dev = m.to(p.device)
        partial.append((p, m_dev, p.detach().clone()))
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        hooks.append(p.register_hook(lambda g, m_dev=m_dev, zero=zero: torch.where(m_dev, g, zero)))
    report.parameters_trainable = len(trainable)
    report.elements_trainable = sum(p.numel() for p in trainable if not any(p is q for q, _, _ in partial)) + \
        sum(int(m.sum()) for _, m, _ in partial)
    if not trainable:
        raise RuntimeUserError("no parameter of the model is trainable")

    manual_decay = scope == "transferred" and weight_decay > 0
    opt = torch.optim.AdamW(trainable, lr=float(lr), weight_decay=0.0 if scope == "transferred" else float(weight_decay),
                            foreach=False)
    order = _batch_order(len(data), steps, batch_size, seed)
    device = next(iter(trainable)).device
    t0 = time.perf_counter()
    try:
        torch.set_flush_denormal(True)  # False (and no effect) where the CPU lacks support
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model.train()
            for step, idx in enumerate(order, 1):
                batch = next(batches(data.subset(idx), len(idx))).to(device)
                opt.zero_grad(set_to_none=True)
                out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
                logits = out.logits if hasattr(out, "logits") else out[0]
                loss, n = causal_lm_loss(logits, batch.input_ids, batch.attention_mask)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise RuntimeUserError(f"the fine-tune loss became {value} at step {step}",
                                           hint="lower the learning rate")
                loss.backward()
                with torch.no_grad():
                    if manual_decay:  # AdamW's decoupled decay, on the selected elements only
                        factor = 1.0 - float(lr) * float(weight_decay)
                        for p, names in params:
                            if not p.requires_grad:
                                continue
                            m = elem_masks[names[0]].to(p.device)
                            p.copy_(torch.where(m, p * factor, p))
                    opt.step()
                    for p, m_dev, orig in partial:  # unselected elements: exactly as they were
                        p.copy_(torch.where(m_dev, p, orig))
                report.losses.append(value)
                report.tokens_seen += n
                report.steps = step
                if progress is not None:
                    progress(step, value)
    finally:
        for h in hooks:
            h.remove()
        for p, _ in params:
            p.requires_grad_(saved_grad[id(p)])
            p.grad = None
        model.train(was_training)
        torch.set_flush_denormal(False)  # the process default; other code may need denormals
        report.seconds = time.perf_counter() - t0
    return report
