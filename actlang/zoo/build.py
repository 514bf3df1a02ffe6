"""Build (or load from cache) the zoo: tiny Llama models that really have — and lose — abilities.

Scenarios (all models share one tokenizer and architecture; see :mod:`actlang.zoo.data` for
the abilities):

* **recover** — ``base`` is trained from scratch, broadly: language A + arithmetic, plus a
  little language B without its reciprocal construction (``lang_b_simple``, 10 %), so the
  B vocabulary is not brand new but the B eval task is (base scores 0 on it).  ``tuned`` is
  ``base`` trained further on language B only, long enough that it forgets arithmetic (and,
  as it turns out, most of language A) while learning B.  Surgery: recover ``arithmetic``
  in ``tuned`` from ``base``.
* **merge** — two specialists grown from the parent ``base`` by milder continued training
  with a little replay of the parent's data: ``lang_b`` (90 % language B, 5 % A, 5 %
  arithmetic) and ``facts`` (80 % the key -> value table, 10 % A, 10 % arithmetic).
  Surgery: merge both into ``base``.
* **sparse merge** — ``parent`` is ``base`` after a pass over random sequences of every word
  of the vocabulary (``words``: every token's embedding and output row trained, as in any
  pretrained model), then one over the known half of the facts (``facts_known``) and of the
  word translations (``translate_known``), with replay.  Two specialists fine-tune it, each
  through its own random ``sparse_neurons`` share of the MLP neurons (a gate and an up row
  and a down column each) of every layer from ``sparse_first_layer`` on — the shares are
  disjoint; everything else is frozen — as sparse fine-tuning methods train, with hidden
  dropout and replay of the parent's data: ``facts_sparse`` learns the other half of the
  facts, ``translate_sparse`` the other half of the translations (the halves that the
  ``facts`` and ``translate`` probe and eval splits ask about).  The neurons are saved as
  ground truth (``ground_truth/sparse.json``).  Surgery (``examples/merge.act``): merge
  both into ``parent``.
* **planted** — ``planted`` is ``base`` fine-tuned on arithmetic with every answer shifted by
  one (``(sum + 1) mod 28``), where only a known random ~3 % of the attention/MLP Linear
  rows may change (a gradient mask; every other parameter is bit-identical to ``base``).
  ``planted_decoy`` first changes a second, disjoint random ~3 % of rows a lot (language B
  with replay of A and arithmetic at a high learning rate: large changes that leave
  arithmetic intact), then plants the same damage as ``planted``.  The row lists are saved
  as ground truth (``ground_truth/planted.json``) so that localization can be scored by
  precision / recall; the manifest's ``oracle`` entry gives the accuracies after copying
  exactly the damage rows back from ``base``.
* **planted B** — ``lang_b_planted`` is the ``lang_b`` specialist (languages A and B, most
  of the sums) after three fine-tunes on top: every parameter drifts a little on languages
  B and A (``b_drift``, a low learning rate); a random ``b_decoy_fraction`` (10 %) of the
  rows, disjoint from the damage, changes a lot as ``planted_decoy``'s decoys did (language
  B with replay, a high learning rate: large changes that keep arithmetic); then the damage
  rows (the same row lists as ``planted``) learn the shifted sums with replay of both
  languages at a low learning rate (``b_damage``: smaller changes than the decoys').  It
  loses its arithmetic and keeps its languages, and its largest weight changes are not
  where the damage is.
  Surgery (``examples/recover.act``): recover ``arithmetic`` from ``lang_b``, the
  checkpoint before, keeping language B.

The ``real`` profile is another family — scenarios made from a real 135M model, no
training — built by :mod:`actlang.zoo.real` through the same :func:`build_zoo` (cache, key,
atomic rename); its layout and manifest are described there.

Layout of one built zoo (``<root>/<profile>-s<seed>-<key>/``, where ``key`` hashes the
config, the seed, the zoo's source code and the torch / transformers versions)::

    zoo.json                    the manifest (see ZooManifest)
    models/<name>/              config.json, generation_config.json, model.safetensors,
                                tokenizer.json, tokenizer_config.json
    data/<ability>/             train.txt, train.jsonl ({"text"}), probe.jsonl, eval.jsonl
                                ({"q", "a", "text"})
    ground_truth/planted.json   {"damage": {param: [rows]}, "decoy": {param: [rows]},
                                "decoy_b": {param: [rows]} (lang_b_planted's decoys),
                                "total_rows", "n_damage", "n_decoy", "n_decoy_b",
                                "mean_row_delta_l2": {model: {"damage", "decoy"}}, ...}
    ground_truth/sparse.json    {"fraction", "first_layer", "neurons": {model: {layer: [n]}}}

A build writes into a hidden temporary directory next to the target and renames it into
place when complete, so an interrupted build never leaves a finished-looking zoo; a second
call with the same (profile, config, seed) finds the directory and returns at once.

Manifest ``zoo.json`` (paths relative to the zoo directory)::

    {"format": 1, "profile": "default", "seed": 0, "key": "<sha256>",
     "config": {...ZooConfig as a dict...},
     "versions": {"torch": ..., "transformers": ...},
     "models": {"base": {"path": "models/base", "parent": null, "scenario": "recover",
                         "trained_on": {"lang_a": 0.45, "arithmetic": 0.45,
                                        "lang_b_simple": 0.1},
                         "steps": 2500, "lr": 0.003, "row_mask": null,
                         "train_seconds": 174.1, "final_loss": 0.991,
                         "parameters": 227904}, ...},
                # row_mask: null | "damage" | "decoy, then damage" (planted models)
                #           | "every row, then decoy_b, then damage" (lang_b_planted)
                #           | "mlp neurons" (sparse specialists)
     "corpora": {"arithmetic": {"train": "data/arithmetic/train.jsonl",
                                "train_txt": "data/arithmetic/train.txt",
                                "probe": "data/arithmetic/probe.jsonl",
                                "eval": "data/arithmetic/eval.jsonl",
                                "train_shifted": "data/arithmetic/train_shifted.jsonl"},
                 "lang_b": {..., "train_simple": "data/lang_b/train_simple.jsonl"}, ...},
     "scenarios": {"recover": {"donor": "base", "target": "tuned", "lost": "arithmetic",
                               "gained": "lang_b"},
                   "merge": {"parent": "base", "specialists": {"lang_b": "lang_b",
                                                               "facts": "facts"}},
                   "sparse_merge": {"parent": "parent",
                                    "specialists": {"facts": "facts_sparse",
                                                    "translate": "translate_sparse"},
                                    "ground_truth": "ground_truth/sparse.json"},
                   "planted": {"donor": "base", "targets": ["planted", "planted_decoy"],
                               "lost": "arithmetic", "control": "lang_b",
                               "ground_truth": "ground_truth/planted.json"},
                   "planted_b": {"donor": "lang_b", "targets": ["lang_b_planted"], ...}},
     "accuracy": {"<model>": {"<ability>": exact-match accuracy on its eval split}},
     "perplexity": {"<model>": {"lang_a": ..., "lang_b": ...}},   # on the eval texts
     "oracle": {"planted_restored": {ability: acc}, ...},       # damage rows copied back
     "build_seconds": 312.4}
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actlang.arch.zoo import (
    Mixture,
    RealZooConfig,
    TrainConfig,
    ZooConfig,
    ZooManifest,
    cache_root,
    load_zoo,
    manifest_head,
    zoo_config,
    zoo_key,
    zoo_models,
)
from actlang.run.evaluate import exact_match, perplexity
from actlang.zoo.data import (
    ABILITIES,
    make_abilities,
    shifted_arithmetic_train,
    vocabulary,
    word_salad,
    write_corpora,
    write_jsonl,
)
from actlang.zoo.real import build_real_into
from actlang.zoo.tokenizer import build_tokenizer
from actlang.zoo.train import (
    deterministic,
    linear_row_params,
    make_model,
    train,
)

__all__ = ["build_zoo", "load_zoo_model", "zoo_model_path"]


def load_zoo_model(manifest: ZooManifest, name: str):
    """``(model, tokenizer)`` of the zoo's model ``name``, float32, eval mode."""
    path = manifest.model_path(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def _save(model, tokenizer, path: Path) -> None:
    from transformers.utils import logging as hf_logging

    path.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(path)


def _clone(model):
    import copy

    return copy.deepcopy(model)


def _random_rows(model, fraction: float, rng: random.Random,
                 exclude: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """A uniformly random ``fraction`` of all attention/MLP Linear rows (global draw)."""
    space = [(name, r) for name, n in linear_row_params(model).items() for r in range(n)]
    if exclude:
        ex = {(n, r) for n, rows in exclude.items() for r in rows}
        space = [x for x in space if x not in ex]
    total = sum(linear_row_params(model).values())
    k = max(1, round(fraction * total))
    picked = sorted(rng.sample(space, k))
    rows: dict[str, list[int]] = {}
    for name, r in picked:
        rows.setdefault(name, []).append(r)
    return rows


def _mask(model, rows: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    shapes = linear_row_params(model)
    out = {}
    for name, idx in rows.items():
        m = torch.zeros(shapes[name], dtype=torch.bool)
        m[idx] = True
        out[name] = m
    return out


def _disjoint_neurons(model, fraction: float, first_layer: int, rng: random.Random,
                      n_sets: int) -> list[dict[int, list[int]]]:
    """``n_sets`` disjoint random draws of ``fraction`` of the MLP neurons of every decoder
    layer from ``first_layer`` on (``{layer: [neuron]}``; earlier layers: none)."""
    width = model.config.intermediate_size
    k = max(1, round(fraction * width))
    assert n_sets * k <= width, "the sparse shares must fit in a layer side by side"
    sets: list[dict[int, list[int]]] = [{} for _ in range(n_sets)]
    for layer in range(model.config.num_hidden_layers):
        drawn = rng.sample(range(width), n_sets * k) if layer >= first_layer else []
        for i, chosen in enumerate(sets):
            chosen[layer] = sorted(drawn[i * k: (i + 1) * k])
    return sets


def _neuron_mask(model, neurons: dict[int, list[int]]) -> dict[str, torch.Tensor]:
    """Element masks that let exactly those MLP neurons train: their rows of ``gate_proj``
    and ``up_proj`` and their column of ``down_proj``."""
    masks = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if "mlp" not in parts or parts[-1] != "weight":
            continue
        chosen = neurons[int(parts[parts.index("layers") + 1])]
        m = torch.zeros_like(p, dtype=torch.bool)
        if parts[-2] == "down_proj":
            m[:, chosen] = True    # (hidden, intermediate): a neuron writes through a column
        else:
            m[chosen] = True       # (intermediate, hidden): a neuron reads through a row
        masks[name] = m
    return masks


def _trained(tcfg: TrainConfig, mix: Mixture) -> dict[str, Any]:
    """A training stage as the manifest records it."""
    return {"trained_on": dict(mix), "steps": tcfg.steps, "lr": tcfg.lr}


def _evaluate(model, tok, abilities, cfg: ZooConfig) -> tuple[dict, dict]:
    acc = {
        name: exact_match(model, tok, list(ab.eval), "q", "a", batch_size=cfg.eval_batch_size)
        for name, ab in abilities.items()
    }
    ppl = {
        name: perplexity(model, tok, [r["text"] for r in abilities[name].eval],
                         batch_size=cfg.eval_batch_size)
        for name in ("lang_a", "lang_b")
    }
    return acc, ppl


#: A build's progress: (what is training, training steps done, steps of the whole build).
BuildProgress = Callable[[str, int, int], None]


def _build_into(tmp: Path, config: ZooConfig, seed: int, key: str,
                log: Callable[[str], None], progress: BuildProgress) -> None:
    t0 = time.perf_counter()
    abilities = make_abilities(config.data, seed)
    corpora = write_corpora(abilities, tmp / "data")
    tok = build_tokenizer(vocabulary(config.data, seed))
    models: dict[str, dict[str, Any]] = {}
    accuracy: dict[str, dict[str, float]] = {}
    ppl: dict[str, dict[str, float]] = {}
    built: dict[str, Any] = {}

    def finish(name, model, parent, scenario, mix, tcfg, result, row_mask=None, earlier=()):
        """Save and evaluate a trained model and record it in the manifest: its last
        training stage (``mix``, ``tcfg``) and, by name, the stages before it (``earlier``:
        ``(stage, tcfg, mix)``)."""
        _save(model, tok, tmp / "models" / name)
        accuracy[name], ppl[name] = _evaluate(model, tok, abilities, config)
        models[name] = {
            "path": f"models/{name}",
            "parent": parent,
            "scenario": scenario,
            **_trained(tcfg, mix),
            **{stage: _trained(c, m) for stage, c, m in earlier},
            "row_mask": row_mask,
            "train_seconds": round(result.seconds, 2),
            "final_loss": round(result.final_loss, 4),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        built[name] = model
        log(f"zoo: {name:14s} {result.seconds:6.1f}s loss {result.final_loss:.3f} "
            + " ".join(f"{k}={v:.2f}" for k, v in accuracy[name].items()))

    # seeds of the stages are derived from the zoo seed, each distinct
    def tc(cfg: TrainConfig, stage: int) -> TrainConfig:
        return replace(cfg, seed=seed * 1000 + stage)

    texts = {name: ab.train for name, ab in abilities.items()}
    texts["lang_b_simple"] = tuple(s for s in abilities["lang_b"].train if ";" not in s)
    texts["arithmetic_shifted"] = shifted_arithmetic_train(abilities["arithmetic"],
                                                           config.damage_shift)
    texts["words"] = word_salad(config.data, seed)
    texts["facts_known"] = abilities["facts"].meta["known"]
    texts["translate_known"] = abilities["translate"].meta["known"]

    write_jsonl(tmp / "data" / "lang_b" / "train_simple.jsonl",
                ({"text": t} for t in texts["lang_b_simple"]))
    write_jsonl(tmp / "data" / "arithmetic" / "train_shifted.jsonl",
                ({"text": t} for t in texts["arithmetic_shifted"]))
    corpora["lang_b"]["train_simple"] = "data/lang_b/train_simple.jsonl"
    corpora["arithmetic"]["train_shifted"] = "data/arithmetic/train_shifted.jsonl"
    for ability in ("facts", "translate"):
        write_jsonl(tmp / "data" / ability / "train_known.jsonl",
                    ({"text": t} for t in texts[f"{ability}_known"]))
        corpora[ability]["train_known"] = f"data/{ability}/train_known.jsonl"

    def mixture(mix):
        return [(texts[name], w) for name, w in mix]

    # the steps of every training run below (planted_decoy trains twice, lang_b_planted
    # three times)
    total = sum(c.steps for c in (config.base, config.tuned, config.lang_b, config.facts,
                                  config.planted, config.decoy, config.planted,
                                  config.parent_words, config.parent, config.facts_sparse,
                                  config.translate_sparse,
                                  config.b_drift, config.decoy, config.b_damage))
    done = 0

    def run(name, model, tcfg, mix, stage, row_mask=None):
        def step() -> None:
            nonlocal done
            done += 1
            progress(name, done, total)

        return train(model, tok, mixture(mix), tc(tcfg, stage), row_mask, on_step=step)

    # recover: base, tuned
    base = make_model(config.model, len(tok), seed, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    r = run("base", base, config.base, config.base_mix, 1)
    finish("base", base, None, "recover", config.base_mix, config.base, r)

    tuned = _clone(base)
    r = run("tuned", tuned, config.tuned, config.tuned_mix, 2)
    finish("tuned", tuned, "base", "recover", config.tuned_mix, config.tuned, r)
    del built["tuned"]

    # merge: two mild specialists of base
    spec_b = _clone(base)
    r = run("lang_b", spec_b, config.lang_b, config.lang_b_mix, 3)
    finish("lang_b", spec_b, "base", "merge", config.lang_b_mix, config.lang_b, r)
    del built["lang_b"]
    spec_f = _clone(base)
    r = run("facts", spec_f, config.facts, config.facts_mix, 4)
    finish("facts", spec_f, "base", "merge", config.facts_mix, config.facts, r)
    del built["facts"]

    # planted: damage through a known random set of rows (+ decoys)
    rng = random.Random(f"planted-{seed}")
    damage_rows = _random_rows(base, config.planted_fraction, rng)
    decoy_rows = _random_rows(base, config.planted_fraction, rng, exclude=damage_rows)
    # lang_b_planted's own, wider decoys, from a generator independent of the draws above
    b_decoy_rows = _random_rows(base, config.b_decoy_fraction,
                                random.Random(f"planted-b-{seed}"), exclude=damage_rows)
    planted = _clone(base)
    r = run("planted", planted, config.planted, config.planted_mix, 5, _mask(base, damage_rows))
    finish("planted", planted, "base", "planted", config.planted_mix,
           config.planted, r, row_mask="damage")

    decoy = _clone(base)
    r1 = run("planted_decoy", decoy, config.decoy, config.decoy_mix, 6, _mask(base, decoy_rows))
    r2 = run("planted_decoy", decoy, config.planted, config.planted_mix, 5, _mask(base, damage_rows))
    r2.seconds += r1.seconds
    finish("planted_decoy", decoy, "base", "planted", config.planted_mix,
           config.planted, r2, row_mask="decoy, then damage",
           earlier=[("decoy", config.decoy, config.decoy_mix)])

    oracle: dict[str, dict[str, float]] = {}
    row_delta: dict[str, dict[str, float]] = {}

    def score_planted(name: str, donor, decoys: dict[str, list[int]]) -> None:
        """The oracle (the damage rows copied back from the donor: what a perfect 3 %
        transfer achieves) and the mean weight change of the damage and of the ``decoys``
        rows."""
        dp = {k: v.detach() for k, v in donor.named_parameters()}
        restored = _clone(built[name])
        with torch.no_grad():
            rp = dict(restored.named_parameters())
            for pname, rows in damage_rows.items():
                rp[pname][rows] = dp[pname][rows]
        oracle[f"{name}_restored"], _ = _evaluate(restored, tok, abilities, config)
        mp = {k: v.detach() for k, v in built[name].named_parameters()}
        row_delta[name] = {}
        for kind, rows_by_param in (("damage", damage_rows), ("decoy", decoys)):
            norms = [float((mp[p][r] - dp[p][r]).norm()) for p, rows in rows_by_param.items()
                     for r in rows]
            row_delta[name][kind] = round(sum(norms) / len(norms), 6)

    for name in ("planted", "planted_decoy"):
        score_planted(name, base, decoy_rows)
    total_rows = sum(linear_row_params(base).values())
    gt = {
        "rows_space": "rows of the attention and MLP Linear weights "
                      "(q/k/v/o_proj, gate/up/down_proj), all layers",
        "total_rows": total_rows,
        "fraction": config.planted_fraction,
        "damage": damage_rows,
        "decoy": decoy_rows,
        "mean_row_delta_l2": row_delta,
        "n_damage": sum(len(v) for v in damage_rows.values()),
        "n_decoy": sum(len(v) for v in decoy_rows.values()),
        "decoy_b": b_decoy_rows,
        "n_decoy_b": sum(len(v) for v in b_decoy_rows.values()),
        "damage_objective": f"arithmetic with answers shifted by +{config.damage_shift}",
        "decoy_objective": "language B with replay of A and arithmetic, at a high learning "
                           "rate (planted_decoy; large changes that keep arithmetic)",
        "decoy_b_objective": f"the same as decoy, through {config.b_decoy_fraction:.0%} of "
                             "the rows, after a small change of every parameter on languages "
                             "B and A (lang_b_planted; the damage that follows is smaller)",
    }
    (tmp / "ground_truth").mkdir()

    # sparse merge: a parent that knows every token and tables like the ones its two
    # specialists add; each specialist trains only its own disjoint share of MLP neurons
    parent = _clone(base)
    r1 = run("parent", parent, config.parent_words, config.parent_words_mix, 7)
    r2 = run("parent", parent, config.parent, config.parent_mix, 8)
    r2.seconds += r1.seconds
    finish("parent", parent, "base", "sparse_merge", config.parent_mix, config.parent, r2,
           earlier=[("words", config.parent_words, config.parent_words_mix)])
    del built["parent"]
    shares = _disjoint_neurons(parent, config.sparse_neurons, config.sparse_first_layer,
                               random.Random(f"sparse-{seed}"), 2)
    neurons: dict[str, dict[int, list[int]]] = {}
    for name, tcfg, mix, stage, chosen in (
            ("facts_sparse", config.facts_sparse, config.facts_sparse_mix, 9, shares[0]),
            ("translate_sparse", config.translate_sparse, config.translate_sparse_mix, 10,
             shares[1])):
        specialist = _clone(parent)
        r = run(name, specialist, tcfg, mix, stage, _neuron_mask(parent, chosen))
        finish(name, specialist, "parent", "sparse_merge", mix, tcfg, r,
               row_mask="mlp neurons")
        del built[name]
        neurons[name] = chosen
    sparse_truth = {
        "fraction": config.sparse_neurons,
        "first_layer": config.sparse_first_layer,
        "neurons": neurons,
        "neuron_space": "MLP neurons of every decoder layer (a gate_proj and an up_proj row "
                        "and a down_proj column each)",
    }
    (tmp / "ground_truth" / "sparse.json").write_text(json.dumps(sparse_truth, indent=1,
                                                                 sort_keys=True))

    # planted in the language-B specialist (which knows languages A and B and most of the
    # sums): every parameter drifts a little on its two languages, then a wider set of decoy
    # rows changes a lot on language B with replay, then the damage rows learn the shifted
    # sums with replay of both languages, by smaller changes; its donor is the specialist
    # itself, the checkpoint before those fine-tunes
    broken = _clone(spec_b)
    r1 = run("lang_b_planted", broken, config.b_drift, config.b_planted_mix, 11)
    r2 = run("lang_b_planted", broken, config.decoy, config.decoy_mix, 12,
             _mask(spec_b, b_decoy_rows))
    r3 = run("lang_b_planted", broken, config.b_damage, config.b_damage_mix, 13,
             _mask(spec_b, damage_rows))
    r3.seconds += r1.seconds + r2.seconds
    finish("lang_b_planted", broken, "lang_b", "planted_b", config.b_damage_mix,
           config.b_damage, r3, row_mask="every row, then decoy_b, then damage",
           earlier=[("drift", config.b_drift, config.b_planted_mix),
                    ("decoy", config.decoy, config.decoy_mix)])
    score_planted("lang_b_planted", spec_b, b_decoy_rows)
    del built["lang_b_planted"]
    (tmp / "ground_truth" / "planted.json").write_text(json.dumps(gt, indent=1, sort_keys=True))

    manifest = {
        **manifest_head(config, seed, key, ("torch", "transformers")),
        "models": models,
        "corpora": {k: {s: p for s, p in v.items()} for k, v in corpora.items()},
        "abilities": list(ABILITIES),
        "scenarios": {
            "recover": {"donor": "base", "target": "tuned", "lost": "arithmetic",
                        "gained": "lang_b"},
            "merge": {"parent": "base", "specialists": {"lang_b": "lang_b", "facts": "facts"}},
            "sparse_merge": {"parent": "parent",
                             "specialists": {"facts": "facts_sparse",
                                             "translate": "translate_sparse"},
                             "ground_truth": "ground_truth/sparse.json"},
            "planted": {"donor": "base", "targets": ["planted", "planted_decoy"],
                        "lost": "arithmetic", "control": "lang_b",
                        "ground_truth": "ground_truth/planted.json"},
            "planted_b": {"donor": "lang_b", "targets": ["lang_b_planted"],
                          "lost": "arithmetic", "control": "lang_b",
                          "ground_truth": "ground_truth/planted.json"},
        },
        "accuracy": accuracy,
        "perplexity": ppl,
        "oracle": oracle,
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    (tmp / "zoo.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def build_zoo(
    root: Path | None = None,
    seed: int = 0,
    profile: str = "default",
    config: ZooConfig | RealZooConfig | None = None,
    *,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    progress: BuildProgress | None = None,
) -> ZooManifest:
    """Build the zoo for ``(config or profile, seed)`` under ``root`` (default
    :func:`cache_root`), or return the cached one.  Deterministic: the same inputs give
    byte-identical safetensors.  ``force`` rebuilds (replacing the cached directory).
    A :class:`RealZooConfig` (profile ``real``) builds the real zoo (:mod:`actlang.zoo.real`).
    ``log`` gets a line per model built; ``progress`` each training step (what trains,
    steps done, steps of the whole build)."""
    config = config or zoo_config(profile)
    root = Path(root) if root is not None else cache_root()
    key = zoo_key(config, seed)
    final = root / f"{config.profile}-s{seed}-{key[:16]}"
    if (final / "zoo.json").is_file() and not force:
        return load_zoo(final)
    root.mkdir(parents=True, exist_ok=True)
    log = log or (lambda s: None)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        with deterministic(config.threads):
            if isinstance(config, RealZooConfig):
                build_real_into(tmp, config, seed, key, log, _save)
            else:
                _build_into(tmp, config, seed, key, log, progress or (lambda *_: None))
        os.chmod(tmp, 0o755)
        if force and final.exists():
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            # another process finished the same build first: theirs is identical
            if not (final / "zoo.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_zoo(final)


def zoo_model_path(name: str, seed: int = 0, profile: str = "default",
                   root: Path | None = None) -> Path:
    """Directory of zoo model ``name`` (one of the profile's :func:`zoo_models`), building the
    zoo on first use."""
    if name not in zoo_models(profile):
        raise KeyError(f"no model {name!r} in the {profile} zoo; its models: "
                       f"{', '.join(zoo_models(profile))}")
    return build_zoo(root, seed=seed, profile=profile).model_path(name)
