"""What the language's blocks, fields and builtin functions accept — kept as data.

The grammar only knows ``name = value``; this module says which names each block takes, of
which type and unit, with which default. The checker reads these tables (and fills every
absent field from its default, written as a spec would write it), LANGUAGE.md documents them
(a test keeps the two in sync), and a new field is one line here. The options of the method
itself — scores, granularities, merge methods, ... — are declared in
:mod:`actlang.arch.registry`; the enumerations below are read from there.

Types are short strings: ``model corpus ability eval selector score budget string int float
bool range size enum list[T] model|enum``. Numeric fields carry bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from actlang.arch import registry as R
from actlang.arch import zoo
from actlang.arch.registry import FieldSpec


def _fields(*specs: FieldSpec) -> dict[str, FieldSpec]:
    return {spec.name: spec for spec in specs}


def _methods_where(test) -> str:
    """``"true for linear, ties; false otherwise"`` from the merge registry."""
    names = [m.name for m in R.MERGE_METHODS if test(m)]
    return f"true for {', '.join(names)}; false otherwise"


# ---- canonical module kinds ---------------------------------------------------------------------

# Every architecture adapter maps these names to checkpoint tensors (actlang/arch/adapters).
MODULE_KINDS: tuple[str, ...] = R.MODULE_KINDS.names
MODULE_NAMESPACES: tuple[str, ...] = ("attn", "mlp", "norm", "embed", "lm_head", "all")

# ---- enumerations ---------------------------------------------------------------------------------

SCORES = R.SCORES.names
NORMALIZATIONS = R.NORMALIZATIONS.names
GRANULARITIES = R.GRANULARITIES.names
TIES = R.TIES.names
OVERLAP_POLICIES = R.OVERLAP_POLICIES.names
FINETUNE_SCOPES = R.FINETUNE_SCOPES.names
MERGE_METHODS = R.MERGE_METHODS.names
BUDGET_SCOPES = R.BUDGET_SCOPES
DTYPES = ("auto", "float32", "float16", "bfloat16")
STAGES = ("output", "transferred", "target")
ZOO_PROFILES = zoo.SYNTHETIC_PROFILES + zoo.REAL_PROFILES

# ---- blocks -----------------------------------------------------------------------------------------

ABILITY_FIELDS = _fields(
    FieldSpec("probe", "corpus", "inputs whose activations localize the ability", required=True),
    FieldSpec("control", "corpus",
              "a corpus the ability is *not* about (e.g. the specialist's own domain), "
              "for contrastive scores"),
    FieldSpec("eval", "list[eval]", "how the ability is measured: exact_match(...), "
              "perplexity(...), or a list of them"),
)

TRANSFER_FIELDS = _fields(
    FieldSpec("channels", "selector", "the modules whose output channels may move",
              default="all"),
    FieldSpec("budget", "budget", "how many channels move: a percentage, a count, or "
              "threshold(x); scoped global (default), per module or per layer", required=True,
              scopes=BUDGET_SCOPES),
    FieldSpec("score", "score", "how channels are ranked", default="paired_absdiff"),
    FieldSpec("normalize", "enum", "score normalization", default="none",
              choices=NORMALIZATIONS),
    FieldSpec("contrast", "float", "beta of the contrastive score s(probe) - beta*s(control) "
              "(activation scores; weight_delta and random have none)",
              default="0.0", low=0.0),
    FieldSpec("granularity", "enum", "the unit that is scored and selected",
              default="channel", choices=GRANULARITIES),
    FieldSpec("tie", "enum", "move channels in groups", default="none", choices=TIES),
    FieldSpec("lambda", "float", "interpolation: theta_trg + lambda (theta_src - theta_trg)",
              default="1.0", low=0.0, high=1.0),
    FieldSpec("layers", "range", "only layers in this half-open range, e.g. 4..28"),
    FieldSpec("exclude", "selector", "modules never selected"),
    FieldSpec("min_per_module", "int", "at least this many channels from every module",
              default="0", low=0),
    FieldSpec("max_per_module", "budget", "at most this many (count or percent) per module",
              scopes=()),
    FieldSpec("skip_identical", "bool", "never spend budget on channels whose donor and "
              "target parameters are bit-identical (moving them changes nothing); false "
              "for controls that must sample every channel", default="true"),
    FieldSpec("include_global", "bool",
              "allow residual-stream channels (embed, lm_head, norms, q/k norms) to move",
              default="false"),
    FieldSpec("truth", "truth", "known changed rows to score the selection against: a JSON "
              "file {tensor: [rows]}, or zoo_truth() for the zoo's planted scenario",
              sweep=False),
)

FINETUNE_FIELDS = _fields(
    FieldSpec("data", "corpus", "training data, e.g. mix(probe, retained, weights = [1, 1])",
              required=True),
    FieldSpec("steps", "int", "optimizer steps", default="100", low=1),
    FieldSpec("lr", "float", "AdamW learning rate", default="1e-5", low=0.0, low_open=True),
    FieldSpec("batch_size", "int", "documents per step", default="8", low=1),
    FieldSpec("seed", "int", "data order and dropout seed", default="0", low=0),
    FieldSpec("scope", "enum", "which parameters train: the transferred channels only, all, "
              "or none", default="transferred", choices=FINETUNE_SCOPES),
    FieldSpec("weight_decay", "float", "AdamW weight decay", default="0.0", low=0.0),
)

MERGE_FIELDS = _fields(
    FieldSpec("base", "model", "the common ancestor (task vectors are donor - base); "
              "required by every method but linear"),
    FieldSpec("weights", "list[float]", "one weight per donor", default_doc="equal"),
    FieldSpec("density", "float", "fraction of each task vector kept (ties, dare_*)",
              default="1.0", low=0.0, high=1.0, low_open=True),
    FieldSpec("lambda", "float", "scale of the merged task vector", default="1.0", low=0.0),
    FieldSpec("normalize", "bool", "divide by the sum of weights",
              default_doc="mergekit's: " + _methods_where(lambda m: m.normalize)),
    FieldSpec("rescale", "bool", "ties, dare: scale the kept entries so each task vector "
              "keeps its L1 norm",
              default_doc="mergekit's: " + _methods_where(lambda m: bool(m.rescale))),
    FieldSpec("seed", "int", "dare: drop mask seed", default="0", low=0),
)
# Which of these each method reads: actlang.arch.registry.MERGE_METHODS.

SURGERY_FIELDS = _fields(
    FieldSpec("target", "model", "the model that receives channels", required=True,
              sweep=False),
    FieldSpec("eval", "list[ability]", "abilities measured before and after",
              default_doc="the transferred abilities", sweep=False),
    FieldSpec("overlap", "enum", "when donors select the same channel: average them, take "
              "the highest-scoring donor, the first rule's donor, or fail",
              default="mean", choices=OVERLAP_POLICIES),
    FieldSpec("seed", "int", "seed for everything random in this surgery", default="0", low=0),
    FieldSpec("shard_size", "size", "largest safetensors shard written", default="5GB"),
)

# ---- builtin functions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionSpec:
    """A builtin function: its result type, parameters (positional in order, or by keyword)
    and the type of extra positional arguments, if it takes any."""

    name: str
    result: str
    doc: str
    params: tuple[FieldSpec, ...] = ()
    variadic: str | None = None


_CORPUS_OPTIONS = (
    FieldSpec("limit", "int", "keep at most this many documents", low=1),
    FieldSpec("seed", "int", "shuffle seed (used with limit)", default="0", low=0),
    FieldSpec("max_tokens", "int", "truncate each document to this many tokens",
              default="512", low=1),
)
_DTYPE = FieldSpec("dtype", "enum", "what the model computes in, on any device (auto: "
                   "float32); `actc run --dtype` sets it for every model", default="auto",
                   choices=DTYPES)
_MODEL_OPTIONS = (
    _DTYPE,
    FieldSpec("trust_remote_code", "bool", "run the repository's own modelling code",
              default="false"),
    FieldSpec("allow_pickle", "bool", "accept .bin (pickle) checkpoints; safetensors only "
              "otherwise", default="false"),
)

FUNCTIONS: dict[str, FunctionSpec] = {f.name: f for f in (
    FunctionSpec("local", "model", "a model directory (config.json + safetensors)", (
        FieldSpec("path", "string", "directory, relative to the spec", required=True),
        *_MODEL_OPTIONS)),
    FunctionSpec("hub", "model", "a hub model from the local Hugging Face cache", (
        FieldSpec("id", "string", "repository id, e.g. \"org/name\"", required=True),
        FieldSpec("revision", "string", "commit sha: pinned for reproducibility",
                  required=True),
        *_MODEL_OPTIONS)),
    FunctionSpec("zoo", "model", "a tiny synthetic model that actlang builds (actc zoo build)", (
        FieldSpec("name", "string", " | ".join(zoo.MODELS)
                  + " (profile real: " + " | ".join(zoo.REAL_MODELS) + ")",
                  required=True),
        FieldSpec("seed", "int", "zoo seed", default="0", low=0),
        FieldSpec("profile", "enum", "zoo profile ($ACTLANG_ZOO_PROFILE resizes synthetic ones)",
                  default="default", choices=ZOO_PROFILES),
        *_MODEL_OPTIONS)),
    # A GGUF file holds neither pickle nor code, and transformers converts only the
    # architectures it ships: allow_pickle and trust_remote_code would mean nothing here.
    FunctionSpec("gguf", "model", "a llama.cpp GGUF file, converted once into the cache by "
                 "actc run", (
        FieldSpec("path", "string", "the .gguf file, relative to the spec"),
        FieldSpec("package", "string", "or: an installed Python package that ships the file "
                  "(found, never imported)"),
        FieldSpec("file", "string", "with package: the file's path inside the package"),
        _DTYPE)),
    FunctionSpec("text", "corpus", "a text file, one document per line", (
        FieldSpec("path", "string", "file, relative to the spec", required=True),
        *_CORPUS_OPTIONS)),
    FunctionSpec("jsonl", "corpus", "a jsonl file of records", (
        FieldSpec("path", "string", "file, relative to the spec", required=True),
        FieldSpec("text", "string", "template over record fields, e.g. \"{q} {a}\""),
        FieldSpec("score", "string", "field whose tokens are scored (others are context)"),
        FieldSpec("prompt", "string", "field given as prompt by exact_match"),
        FieldSpec("answer", "string", "field exact_match compares against"),
        *_CORPUS_OPTIONS)),
    FunctionSpec("lines", "corpus", "documents written inline", (
        FieldSpec("documents", "list[string]", "the documents", required=True),
        *_CORPUS_OPTIONS)),
    FunctionSpec("zoo_data", "corpus", "a split of a zoo ability's data", (
        FieldSpec("ability", "enum", "which ability", required=True,
                  choices=("lang_a", "lang_b", "arithmetic", "facts", "translate", "english",
                           "capitals")),
        FieldSpec("split", "enum", "which split", default="probe",
                  choices=("train", "probe", "eval")),
        FieldSpec("zoo_seed", "int", "zoo seed", default="0", low=0),
        FieldSpec("profile", "enum", "zoo profile ($ACTLANG_ZOO_PROFILE resizes synthetic ones)",
                  default="default", choices=ZOO_PROFILES),
        *_CORPUS_OPTIONS)),
    FunctionSpec("mix", "corpus", "documents drawn from several corpora", (
        FieldSpec("weights", "list[float]", "one weight per corpus", default_doc="equal"),
        *_CORPUS_OPTIONS), variadic="corpus"),
    FunctionSpec("exact_match", "eval", "share of prompts answered exactly (greedy)", (
        FieldSpec("data", "corpus", "a jsonl corpus with prompt and answer fields",
                  required=True),
        FieldSpec("max_new_tokens", "int", "generation length", default_doc="answer length",
                  low=1))),
    FunctionSpec("perplexity", "eval", "perplexity on a corpus (lower is better)", (
        FieldSpec("data", "corpus", "the corpus", required=True),)),
    FunctionSpec("zoo_truth", "truth", "the rows the zoo's planted fine-tune changed", (
        FieldSpec("seed", "int", "zoo seed", default="0", low=0),
        FieldSpec("profile", "enum", "zoo profile ($ACTLANG_ZOO_PROFILE resizes synthetic ones)",
                  default="default", choices=ZOO_PROFILES))),
    *(FunctionSpec(m.name, "score", m.doc, m.params) for m in R.SCORES if m.params),
    FunctionSpec("threshold", "budget", "every channel whose score is at least this", (
        FieldSpec("score", "float", "minimum score", required=True),)),
    FunctionSpec("module", "selector", "raw escape hatch: checkpoint tensors by glob", (
        FieldSpec("pattern", "string", "e.g. \"model.layers.*.mlp.down_proj.weight\"",
                  required=True),
        FieldSpec("axis", "int", "the channel axis of the tensor", default="0", low=0))),
    FunctionSpec("eval", "number", "in expect: an ability's score on a model or stage", (
        FieldSpec("ability", "ability", "the ability", required=True),
        FieldSpec("on", "model|enum", "a model, or output (default) / transferred / target",
                  default="output", choices=STAGES))),
    FunctionSpec("sweep", "sweep", "one surgery per value (in surgery and rule fields)",
                 variadic="any"),
)}


@dataclass(frozen=True)
class Limit:
    """A bound on the work one spec can ask of ``actc check`` and ``actc plan``, checked
    before the work is done, so no input makes either run longer than a few seconds."""

    name: str
    value: int
    doc: str


LIMITS: dict[str, Limit] = {limit.name: limit for limit in (
    Limit("spec_bytes", 1 << 18, "bytes in one spec file (corpora live in their own files)"),
    Limit("source_bytes", 1 << 19, "bytes of spec text one spec reads: itself and its "
          "imports, transitively (about 5 s of parsing and checking on one slow core)"),
    Limit("files", 256, "spec files one spec reads: itself and its imports, transitively"),
    Limit("sweep_values", 1000, "values in one `sweep(...)`"),
    Limit("surgery_variants", 1000, "surgeries one spec's sweeps expand to: the product of "
          "each swept surgery's sweep lengths, summed over its surgeries"),
    Limit("expansions", 50_000, "references to lets and recipe parameters followed while "
          "checking one spec (a let written as `a + a` of the let before it doubles them)"),
)}
