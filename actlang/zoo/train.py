"""Training of the zoo's tiny Llama models on CPU, deterministically.

* :class:`ModelConfig` / :func:`make_model` — a from-scratch ``LlamaForCausalLM`` (GQA, SwiGLU,
  RMSNorm, untied embeddings), initialised from a seed.
* :class:`TrainConfig` / :func:`train` — AdamW, linear warm-up then cosine decay, gradient
  clipping, a weighted mixture of text corpora sampled from a seeded generator.
  ``row_mask={param name: bool[rows] or bool[shape]}`` restricts training to those rows (or
  elements) of those parameters (everything else is frozen; after every step the frozen
  entries are restored bit-exactly).  ``TrainConfig.dropout`` drops out every decoder
  layer's attention and MLP output while training, with masks seeded by the config.
* :func:`deterministic` — the context every build runs in: a fixed number of threads,
  ``torch.use_deterministic_algorithms(True)``, ``torch.set_flush_denormal(True)`` (Adam state
  of untouched rows decays into denormals otherwise, slowing CPU training ~10x); the previous
  settings are restored on exit.

Training text is ``<bos> words <eos>``; the loss covers every non-pad token.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from actlang.arch.zoo import ModelConfig, TrainConfig

__all__ = ["TrainResult", "make_model", "train",
           "deterministic", "linear_row_params"]


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_loss: float          # mean loss over the last 50 steps
    losses: list[float]        # every step's loss


@contextmanager
def deterministic(threads: int = 1) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads and deterministic algorithms."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
        torch.set_flush_denormal(False)


def make_model(cfg: ModelConfig, vocab_size: int, seed: int, *, pad_token_id: int = 0,
               bos_token_id: int = 1, eos_token_id: int = 2) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama (float32), its weights a function of ``seed`` only."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = pad_token_id
    return model.float()


_LINEAR_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_row_params(model: torch.nn.Module) -> dict[str, int]:
    """``{name: rows}`` of the attention and MLP Linear weights (the usual channel space)."""
    return {
        name: p.shape[0]
        for name, p in model.named_parameters()
        if p.ndim == 2 and name.split(".")[-2] in _LINEAR_KINDS
    }


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    return [ids + [eos] for ids in tokenizer(list(texts))["input_ids"]]


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    cos = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def train(
    model: LlamaForCausalLM,
    tokenizer,
    mixture: Sequence[tuple[Sequence[str], float]],
    cfg: TrainConfig,
    row_mask: Mapping[str, torch.Tensor] | None = None,
    on_step: Callable[[], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on a weighted mixture ``[(texts, weight), ...]``.

    Each example of a batch picks a corpus with probability proportional to its weight, then
    a uniformly random text of it (Python ``random.Random(cfg.seed)``: deterministic).
    ``on_step`` is called after each optimizer step (progress).
    """
    start = time.perf_counter()
    corpora = [_encode(tokenizer, texts) for texts, _ in mixture]
    weights = [float(w) for _, w in mixture]
    if any(len(c) == 0 for c in corpora) or not corpora:
        raise ValueError("empty corpus in mixture")
    rng = random.Random(f"train-{cfg.seed}")
    pad = tokenizer.pad_token_id

    params = dict(model.named_parameters())
    frozen_copy: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if row_mask is not None:
        unknown = set(row_mask) - set(params)
        if unknown:
            raise KeyError(f"row_mask names unknown parameters: {sorted(unknown)}")
        for name, p in params.items():
            if name in row_mask:
                keep = ~row_mask[name].to(torch.bool)
                frozen_copy[name] = (keep, p.detach()[keep].clone())
                p.requires_grad_(True)
            else:
                p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay if row_mask is None else 0.0},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8,
    )
    model.train()
    losses: list[float] = []
    with _dropout(model, cfg):
        for step in range(cfg.steps):
            batch = []
            for _ in range(cfg.batch_size):
                c = rng.choices(range(len(corpora)), weights=weights)[0]
                batch.append(corpora[c][rng.randrange(len(corpora[c]))])
            width = max(len(b) for b in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, b in enumerate(batch):
                ids[i, : len(b)] = torch.tensor(b)
                mask[i, : len(b)] = 1
            labels = ids.masked_fill(mask == 0, -100)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if row_mask is not None:
                for name, (keep, _) in frozen_copy.items():
                    g = params[name].grad
                    if g is not None:
                        g[keep] = 0
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()
            if row_mask is not None:
                with torch.no_grad():
                    for name, (keep, orig) in frozen_copy.items():
                        params[name][keep] = orig
            losses.append(float(out.loss.detach()))
            if on_step is not None:
                on_step()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    tail = losses[-50:] if losses else [float("nan")]
    return TrainResult(cfg.steps, time.perf_counter() - start, sum(tail) / len(tail), losses)


@contextmanager
def _dropout(model: LlamaForCausalLM, cfg: TrainConfig) -> Iterator[None]:
    """While training: dropout ``cfg.dropout`` on every decoder layer's attention and MLP
    output (a fine-tune with hidden dropout; the zoo's Llama config has none of its own),
    its masks drawn from a generator seeded by ``cfg.seed`` so that builds stay identical."""
    if not cfg.dropout:
        yield
        return

    def drop(module: torch.nn.Module, inputs: tuple, output):
        if isinstance(output, tuple):  # attention: (output, weights)
            dropped = torch.nn.functional.dropout(output[0], cfg.dropout, module.training)
            return (dropped,) + output[1:]
        return torch.nn.functional.dropout(output, cfg.dropout, module.training)

    hooks = [module.register_forward_hook(drop)
             for layer in model.model.layers for module in (layer.self_attn, layer.mlp)]
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            yield
    finally:
        for hook in hooks:
            hook.remove()


def config_dict(cfg: ModelConfig | TrainConfig) -> dict:
    return asdict(cfg)
