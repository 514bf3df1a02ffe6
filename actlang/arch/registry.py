"""What the method offers, each declared once: scores, normalizations, budget modes,
granularities, tie modes, overlap policies, merge methods and fine-tune scopes.

Every reader takes its facts from here — the checker (which names exist, "did you mean"),
LANGUAGE.md's tables (:mod:`actlang.lang.docs`), lowering (which statistics a score reads),
the planner, and the runtime (how a score is computed from those statistics, which fields a
merge method reads and their defaults). Adding a score of an existing family is one entry
here; a new family adds its computation in :mod:`actlang.run.scores` as well, and a test
checks that every declared score runs.

No torch: ``actc check`` and ``actc plan`` read this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Iterator, Literal, TypeVar

__all__ = [
    "BUDGET_MODES",
    "BUDGET_SCOPES",
    "BudgetKind",
    "BudgetMode",
    "FINETUNE_SCOPES",
    "FieldSpec",
    "GRANULARITIES",
    "MERGE_METHODS",
    "MODULE_KINDS",
    "ModuleKind",
    "MergeMethod",
    "NORMALIZATIONS",
    "OVERLAP_POLICIES",
    "Option",
    "Registry",
    "SCORES",
    "ScoreMethod",
    "TIES",
    "budget_mode",
    "scope_words",
]


@dataclass(frozen=True)
class FieldSpec:
    """One ``name = value`` field of a block (or one parameter of a builtin function).

    Args:
        name: the field's name.
        type: the value's type (see :mod:`actlang.lang.schema`).
        doc: one line for LANGUAGE.md and hover text.
        required: the block is an error without it.
        default: the value a spec gets when it leaves the field out, as a spec would write it
            (``"1.0"``, ``"channel"``); the checker parses it like any written value.
            ``None``: no default (absent stays absent).
        default_doc: how LANGUAGE.md describes a default that is not a plain value
            (``"equal"``, ``"mergekit's: ..."``); the checker ignores it.
        choices: the allowed names of an ``enum`` type.
        low, high: inclusive numeric bounds (``low_open``: exclusive lower bound).
        scopes: scopes the value may carry (``2% per module``); empty means none.
        sweep: whether ``sweep(...)`` may range over it.
    """

    name: str
    type: str
    doc: str
    required: bool = False
    default: str | None = None
    default_doc: str | None = None
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    scopes: tuple[str, ...] = ()
    sweep: bool = True

    @property
    def shown_default(self) -> str | None:
        """The default as LANGUAGE.md shows it."""
        return self.default_doc or self.default


@dataclass(frozen=True)
class Option:
    """One named choice: the name a spec writes and one line of documentation."""

    name: str
    doc: str


O = TypeVar("O", bound=Option)


class Registry(Generic[O]):
    """Options of one concept, in declaration order (the order LANGUAGE.md lists them)."""

    def __init__(self, concept: str, *options: O) -> None:
        self.concept = concept
        self._options = {o.name: o for o in options}
        assert len(self._options) == len(options), f"duplicate {concept} names"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._options)

    def __getitem__(self, name: str) -> O:
        return self._options[name]

    def __contains__(self, name: object) -> bool:
        return name in self._options

    def __iter__(self) -> Iterator[O]:
        return iter(self._options.values())

    def __len__(self) -> int:
        return len(self._options)


# ---- module kinds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleKind(Option):
    """A canonical kind of module, the name a selector writes (``attn.q``, ``mlp.*``).

    Args:
        residual: its channels are residual-stream dimensions read by every layer (or norm
            elements shared by every head): they move only under ``include_global``.
        excluded: never selected unless named without a wildcard (``lm_head``: its rows are
            vocabulary entries).
    """

    residual: bool = False
    excluded: bool = False

    @property
    def hooked_by_default(self) -> bool:
        """Whether statistics capture it when no rule can select residual or excluded kinds."""
        return not (self.residual or self.excluded)


MODULE_KINDS: Registry[ModuleKind] = Registry(
    "module kind",
    ModuleKind("attn.q", "query projection"),
    ModuleKind("attn.k", "key projection"),
    ModuleKind("attn.v", "value projection"),
    ModuleKind("attn.o", "attention output projection"),
    ModuleKind("attn.q_norm", "per-head query norm (Qwen3, Gemma 3)", residual=True),
    ModuleKind("attn.k_norm", "per-head key norm", residual=True),
    ModuleKind("mlp.gate", "MLP gate projection"),
    ModuleKind("mlp.up", "MLP up projection"),
    ModuleKind("mlp.down", "MLP down projection"),
    ModuleKind("attn.qkv", "fused q/k/v projection whose layout is not split (GPT-NeoX, Falcon, "
               "Bloom: interleaved per head); selectable only whole"),
    ModuleKind("mlp.gate_up", "fused gate and up projection whose layout is not split"),
    ModuleKind("mlp.router", "mixture-of-experts router (a channel is an expert); weight "
               "scores only"),
    ModuleKind("mlp.experts.*.gate", "gate projection of expert E (mlp.experts.3.gate)"),
    ModuleKind("mlp.experts.*.up", "up projection of expert E"),
    ModuleKind("mlp.experts.*.down", "down projection of expert E"),
    ModuleKind("mlp.shared.gate", "gate projection of the shared expert (Qwen2-MoE)"),
    ModuleKind("mlp.shared.up", "up projection of the shared expert"),
    ModuleKind("mlp.shared.down", "down projection of the shared expert"),
    ModuleKind("norm.input", "norm before attention", residual=True),
    ModuleKind("norm.post_attn", "norm after attention (before the MLP in Llama)",
               residual=True),
    ModuleKind("norm.pre_ffn", "norm before the MLP (Gemma 2/3)", residual=True),
    ModuleKind("norm.post_ffn", "norm after the MLP (Gemma 2/3)", residual=True),
    ModuleKind("norm.final", "the final norm", residual=True),
    ModuleKind("embed", "token embedding (a channel is a hidden dimension)", residual=True),
    ModuleKind("embed.pos", "learned position embedding (GPT-2)", residual=True),
    ModuleKind("lm_head", "output head (a channel is a vocabulary entry)", excluded=True),
)

# ---- scores ---------------------------------------------------------------------------------

ScoreInputs = Literal["paired", "unpaired", "weights", "none"]


@dataclass(frozen=True)
class ScoreMethod(Option):
    """How channels are ranked.

    Args:
        inputs: what the score reads — ``paired`` statistics (both models on the same
            batches, lock-step), ``unpaired`` statistics of each model, the two checkpoints'
            ``weights``, or ``none`` (a control).
        statistic: for unpaired scores, the per-channel sum whose mean is compared
            (``|mean_b - mean_a|``).
        relative_to: the sum whose mean (averaged over both models) divides the score under
            ``normalize = relative``; ``None``: the score is already a probability.
        params: parameters of a score written as a call, ``random(seed = 1)``.
        refuses: kind globs whose channels the score cannot measure (a rule that could
            select them is an error at plan time).
    """

    inputs: ScoreInputs = "unpaired"
    statistic: str | None = None
    relative_to: str | None = None
    params: tuple[FieldSpec, ...] = ()
    refuses: tuple[str, ...] = ()

    @property
    def reads_activations(self) -> bool:
        """Whether the score ranks by activation statistics (forward passes on a corpus),
        which a contrast, a control corpus and normalization act on."""
        return self.inputs in ("paired", "unpaired")


SCORES: Registry[ScoreMethod] = Registry(
    "score",
    ScoreMethod("paired_absdiff", "`mean_t |a_t(donor) - a_t(target)|` on the same tokens "
                "(the paper's default; lock-step forward passes)", inputs="paired",
                statistic="sum_absdiff", relative_to="sum_abs"),
    ScoreMethod("local_absdiff", "`mean_t |(W_donor - W_target) x_t|`, `x_t` the target "
                "module's input in the lock-step pass: the module's own change on the inputs "
                "it really sees, blind to what flows in from upstream layers",
                inputs="paired", statistic="sum_local", relative_to="sum_abs",
                refuses=("norm.*", "attn.q_norm", "attn.k_norm")),
    ScoreMethod("absmean_diff", "`|E|a|(donor) - E|a|(target)|` from each model's own pass",
                statistic="sum_abs", relative_to="sum_abs"),
    ScoreMethod("mean_diff", "`|E a(donor) - E a(target)|`", statistic="sum",
                relative_to="sum_abs"),
    ScoreMethod("m2_diff", "`|E a^2(donor) - E a^2(target)|`", statistic="sum_sq",
                relative_to="sum_sq"),
    ScoreMethod("freq_diff", "`|P(a > 0)(donor) - P(a > 0)(target)|`", statistic="count_pos"),
    ScoreMethod("weight_delta", "control: L2 norm of each channel's parameter difference "
                "(reads the weights, no forward pass)", inputs="weights"),
    ScoreMethod("random", "control: channels chosen uniformly at random", inputs="none",
                params=(FieldSpec("seed", "int", "random seed", default="0", low=0),)),
)

NORMALIZATIONS: Registry[Option] = Registry(
    "normalization",
    Option("none", "scores as computed"),
    Option("relative", "divide by the channel's typical magnitude (mean of both models)"),
    Option("zscore", "standardize within each module, so modules of different scales "
           "compete fairly in a global ranking"),
)

# ---- selection ------------------------------------------------------------------------------

BudgetKind = Literal["fraction", "count", "threshold"]

# What a budget's value is, by kind: the language's three budget values (``3%``, ``500``,
# ``threshold(0.1)``), as errors and LANGUAGE.md describe them.
_BUDGET_VALUES: dict[str, str] = {
    "fraction": "a fraction between 0% and 100%",
    "count": "a whole number of units",
    "threshold": "a minimum score",
}


@dataclass(frozen=True)
class BudgetMode(Option):
    """How a budget says how many units move. The name is the runtime's
    (``Budget("per_layer", 0.05)``, ``budget_mode`` in run results).

    Args:
        kind: what the value is — a ``fraction`` of the units ranked together, a ``count``
            of units, or a ``threshold`` every selected unit's score reaches
            (:attr:`value_doc`); the language's budget value of the same name.
        scope: the units ranked together: every candidate (``global``), or each
            ``module`` / ``layer`` apart; the language's scope (``2% per module``).
        written: how a spec writes it, an example for LANGUAGE.md.
    """

    kind: BudgetKind
    scope: str
    written: str

    @property
    def value_doc(self) -> str:
        return _BUDGET_VALUES[self.kind]

    def accepts(self, value: float) -> bool:
        """Whether ``value`` is a value of this mode (:attr:`value_doc`)."""
        if self.kind == "fraction":
            return 0.0 <= value <= 1.0
        if self.kind == "count":
            return value >= 0 and float(value).is_integer()
        return True  # any score is a threshold


BUDGET_MODES: Registry[BudgetMode] = Registry(
    "budget mode",
    BudgetMode("global", "the top share of every candidate unit, ranked together (the "
               "paper's default)", kind="fraction", scope="global", written="3%"),
    BudgetMode("per_module", "the top share of each module", kind="fraction", scope="module",
               written="2% per module"),
    BudgetMode("per_layer", "the top share of each layer", kind="fraction", scope="layer",
               written="1% per layer"),
    BudgetMode("count", "the best units, this many", kind="count", scope="global",
               written="500"),
    BudgetMode("threshold", "every unit whose score is at least this", kind="threshold",
               scope="global", written="threshold(0.1)"),
)
assert len({(m.kind, m.scope) for m in BUDGET_MODES}) == len(BUDGET_MODES), \
    "two budget modes of one kind and scope"

# The scopes a budget may carry are those of its modes: a scope is where a mode ranks its
# units, so listing them apart (with their own docs) would say each fraction mode twice.
BUDGET_SCOPES: tuple[str, ...] = tuple(dict.fromkeys(m.scope for m in BUDGET_MODES))


def budget_mode(kind: str, scope: str = "global") -> BudgetMode | None:
    """The mode of a language budget of ``kind`` and ``scope`` (``2% per module``:
    ``fraction``, ``module``); None where the language has none (a count per module)."""
    return next((m for m in BUDGET_MODES if (m.kind, m.scope) == (kind, scope)), None)


def scope_words(scope: str) -> str:
    """How a spec writes a scope: ``global``, or ``per NAME`` (the grammar's two forms)."""
    return "global" if scope == "global" else f"per {scope}"


GRANULARITIES: Registry[Option] = Registry(
    "granularity",
    Option("channel", "one output channel of one module"),
    Option("neuron", "an MLP neuron: gate and up rows and the down column, scored together"),
    Option("head", "an attention head (q rows, o columns) or a KV head (k and v rows)"),
    Option("module", "every channel of one module of one layer"),
    Option("layer", "every candidate channel of one layer"),
)

TIES: Registry[Option] = Registry(
    "tie",
    Option("none", "channels move alone"),
    Option("neuron", "a gate or up row brings its neuron's gate, up and down slices"),
    Option("head", "a q channel brings its head (q rows, o columns) and its KV group's k/v "
           "rows; a k/v channel brings its group's k and v rows"),
    Option("kv_group", "any q/k/v channel brings its whole KV group"),
)

OVERLAP_POLICIES: Registry[Option] = Registry(
    "overlap policy",
    Option("mean", "average the donors that selected the channel"),
    Option("max_score", "take the donor whose score for the channel is highest"),
    Option("priority", "take the first rule's donor"),
    Option("error", "fail"),
)

# ---- merging and fine-tuning ----------------------------------------------------------------


@dataclass(frozen=True)
class MergeMethod(Option):
    """A whole-model merge, defined as mergekit defines it.

    Args:
        fields: the merge block fields the method reads (others are an error).
        normalize: mergekit's default for ``normalize`` (divide by the sum of weights).
        rescale: mergekit's default for ``rescale`` (keep a sparsified task vector's L1
            norm), ``None`` where the method does not sparsify.
        sparsify: how task vectors are sparsified: ``None``, ``magnitude`` (TIES) or
            ``random`` (DARE).
        sign_consensus: TIES's elected-sign step.
    """

    fields: tuple[str, ...] = ()
    normalize: bool = False
    rescale: bool | None = None
    sparsify: Literal["magnitude", "random"] | None = None
    sign_consensus: bool = False

    @property
    def needs_base(self) -> bool:
        return "base" in self.fields

    def peak_tensors(self, donors: int) -> float:
        """The most work tensors of one tensor's size a merge holds at once (measured with
        ``bench/bench_merge.py``): the result for ``linear``; else each donor's weighted task
        vector and their sum; a magnitude selection adds the task vector's magnitudes and
        its keep mask while it runs."""
        if not self.needs_base:
            return 1.0
        return donors + (2.5 if self.sparsify == "magnitude" else 1.0)


_DARE_FIELDS = ("base", "weights", "density", "lambda", "rescale", "seed", "normalize")

MERGE_METHODS: Registry[MergeMethod] = Registry(
    "merge method",
    MergeMethod("linear", "weighted average of the donors", fields=("weights", "normalize"),
                normalize=True),
    MergeMethod("task_arithmetic", "base + lambda * weighted sum of task vectors",
                fields=("base", "weights", "lambda", "normalize")),
    MergeMethod("ties", "trim each task vector to its largest entries, elect a sign, average "
                "the agreeing entries", fields=("base", "weights", "density", "lambda",
                                                 "normalize", "rescale"),
                normalize=True, rescale=False, sparsify="magnitude", sign_consensus=True),
    MergeMethod("dare_linear", "drop task-vector entries at random, rescale, add",
                fields=_DARE_FIELDS, rescale=True, sparsify="random"),
    MergeMethod("dare_ties", "DARE's random drop with TIES's sign election", fields=_DARE_FIELDS,
                rescale=True, sparsify="random", sign_consensus=True),
)

FINETUNE_SCOPES: Registry[Option] = Registry(
    "fine-tune scope",
    Option("transferred", "train only the moved channels (a gradient mask); every other "
           "parameter stays bit-identical to the target"),
    Option("full", "train every parameter"),
    Option("none", "no fine-tune"),
)
