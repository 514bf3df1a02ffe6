"""Text → syntax tree. Lark LALR over grammar/act.lark, then a Transformer to ``ast`` nodes.

Syntax errors become diagnostics (E001–E004) with a span, what was expected in words, and a
hint where the mistake is a common one (a misspelt keyword, single quotes, an unclosed block).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)
from lark.tree import Meta

from actlang.lang import ast
from actlang.lang.diagnostics import Diagnostic, DiagnosticError, did_you_mean
from actlang.resources import grammar_path

KEYWORDS = ("use", "as", "let", "model", "corpus", "ability", "surgery", "recipe", "transfer",
            "from", "merge", "finetune", "expect", "global", "per", "true", "false")
TOP_LEVEL_KEYWORDS = ("use", "let", "model", "corpus", "ability", "surgery", "recipe")
BLOCK_KEYWORDS = ("transfer", "merge", "finetune", "expect")
# Keywords that can never be names: they may follow or start an expression, where a name
# would be ambiguous. The others are keywords only at the start of a statement, so `ability`
# can still name a recipe parameter and `merge` a recipe.
RESERVED = ("as", "from", "global", "per", "true", "false")

# How Lark's terminal names read in an error message.
_TERMINAL_WORDS = {
    "NAME": "a name", "STRING": "a string", "INT": "an integer", "FLOAT": "a number",
    "PERCENT": "a percentage", "SIZE": "a size", "COMPARE_OP": "a comparison",
    "LBRACE": "`{`", "RBRACE": "`}`", "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`",
    "RSQB": "`]`", "COMMA": "`,`", "EQUAL": "`=`", "DOT": "`.`", "PLUS": "`+`", "MINUS": "`-`",
    "STAR": "`*`", "SLASH": "`/`", "__ANON_0": "`->`", "$END": "end of file",
}


class _CommentSink:
    """Receives the comments the lexer skips (the grammar %ignores them) during one parse."""

    def __init__(self) -> None:
        self.tokens: list[Token] = []

    def __call__(self, token: Token) -> Token:
        self.tokens.append(token)
        return token


_COMMENTS = _CommentSink()


@lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(grammar_path().read_text(), parser="lalr", propagate_positions=True,
                maybe_placeholders=True, lexer_callbacks={"COMMENT": _COMMENTS})


def _terminal_word(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    terminals = {t.name: t for t in _lark().terminals}
    if name in terminals and terminals[name].pattern.type == "str":
        return f"`{terminals[name].pattern.value}`"
    return name.lower()


def parse(text: str, file: str = "<string>") -> ast.Module:
    """Parse one .act file.

    Args:
        text: the source text.
        file: the name diagnostics show for this source.

    Raises:
        DiagnosticError: on a syntax error or an invalid literal.
    """
    _COMMENTS.tokens = []
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as error:
        raise DiagnosticError([_syntax_diagnostic(error, text, file)]) from None
    comments = tuple(ast.Comment(c.value.rstrip(), c.line, c.column, c.start_pos)
                     for c in _COMMENTS.tokens)
    deep = _first_too_deep(tree)
    if deep is not None:  # located at its first character: the node may span many lines
        raise DiagnosticError([too_deep(file, _point_span(file, text, deep.meta.line,
                                                           deep.meta.column))])
    builder = _Builder(file)
    items = builder.transform(tree)
    if builder.errors:
        raise DiagnosticError(builder.errors)
    return ast.Module(items=tuple(items), comments=comments, file=file)


# ---- syntax errors ----------------------------------------------------------------------------


#: How deep a syntax tree may nest (Lark's tree: about one level per expression operator,
#: two per block). The specs shipped with actlang reach 10. The tree is built without
#: recursion, but turning it into ``ast`` nodes, and checking those, recurses once or more
#: per level: this bound keeps both far from Python's recursion limit, whatever the input.
MAX_DEPTH = 100


def _first_too_deep(tree: Tree) -> Tree | None:
    """The first node (in source order) nested deeper than :data:`MAX_DEPTH`, found without
    recursion; None when the tree is shallow enough."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return node
        stack.extend((child, depth + 1) for child in reversed(node.children)
                     if isinstance(child, Tree))
    return None


def too_deep(file: str, span: ast.Span | None = None) -> Diagnostic:
    """Expressions or blocks nested beyond :data:`MAX_DEPTH`, located at the first node too
    deep; the checker, whose guard against recursion catches long chains of lets, gives it
    its own span."""
    return Diagnostic("E006", f"`{file}` nests expressions or blocks too deeply", span,
                      label=f"more than {MAX_DEPTH} levels deep here" if span else None,
                      hint="a spec needs a few levels; split the expression with `let`")


def _point_span(file: str, text: str, line: int, column: int, width: int = 1) -> ast.Span:
    offset = _offset(text, line, column)
    return ast.Span(file, line, column, line, column + width, offset, offset + width)


def _offset(text: str, line: int, column: int) -> int:
    lines = text.split("\n")
    return sum(len(l) + 1 for l in lines[: line - 1]) + column - 1


def _syntax_diagnostic(error: UnexpectedInput, text: str, file: str) -> Diagnostic:
    if isinstance(error, UnexpectedCharacters):
        char = text[error.pos_in_stream] if error.pos_in_stream < len(text) else ""
        hint = {
            "'": "strings are written in double quotes: \"like this\"",
            ";": "statements need no separator; put each on its own line",
            ":": "fields are written `name = value`",
        }.get(char, "remove it, or put it inside a string")
        return Diagnostic("E002", f"unexpected character `{char}`",
                          _point_span(file, text, error.line, error.column),
                          label="not valid here", hint=hint)
    if isinstance(error, UnexpectedEOF) or (
            isinstance(error, UnexpectedToken) and error.token.type == "$END"):
        return _eof_diagnostic(error, text, file)
    assert isinstance(error, UnexpectedToken)
    token = error.token
    expected = sorted(error.accepts or error.expected)
    words = [_terminal_word(name) for name in expected if not name.startswith("__")] or \
            [_terminal_word(name) for name in expected]
    shown = ", ".join(words[:8]) + (", ..." if len(words) > 8 else "")
    span = ast.Span(file, token.line, token.column, token.end_line, token.end_column,
                    token.start_pos, token.end_pos)
    return Diagnostic("E001", f"unexpected {_describe(token)}", span,
                      label=f"expected {shown}", hint=_token_hint(token, expected, text))


def _describe(token: Token) -> str:
    if token.type == "NAME":
        return f"name `{token.value}`"
    if token.value in KEYWORDS:
        return f"keyword `{token.value}`"
    return f"`{token.value}`"


def _token_hint(token: Token, expected: list[str], text: str) -> str | None:
    value = str(token.value)
    if token.type == "NAME":
        if "USE" in expected or "MODEL" in expected:  # at the top level of a file
            suggestion = did_you_mean(value, TOP_LEVEL_KEYWORDS)
            return suggestion or ("a file holds declarations: " + ", ".join(TOP_LEVEL_KEYWORDS))
        if expected == ["EQUAL"]:
            # `tranfer m from b`: the misspelt keyword is the word before this one.
            previous = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text[: token.start_pos])
            suggestion = did_you_mean(previous[-1], BLOCK_KEYWORDS) if previous else None
            return suggestion or "fields are written `name = value`"
        suggestion = did_you_mean(value, BLOCK_KEYWORDS)
        if suggestion:
            return suggestion
    if value == "," and "RBRACE" in expected:
        return "fields are separated by new lines, not commas"
    if value in KEYWORDS and "NAME" in expected:
        return f"`{value}` is a keyword and cannot be used as a name"
    if value == "=" and "COMPARE_OP" in expected:
        return "compare with `==`"
    if "COMMA" in expected and token.type in ("NAME", "STRING", "INT", "FLOAT", "PERCENT"):
        return "separate arguments and list items with `,`"
    return None


def _eof_diagnostic(error: UnexpectedInput, text: str, file: str) -> Diagnostic:
    unclosed = _last_unclosed_bracket(text)
    end_line = text.count("\n") + 1
    end_column = len(text) - (text.rfind("\n") + 1) + 1
    span = _point_span(file, text, end_line, end_column, width=1)
    notes: tuple = ()
    hint = None
    if unclosed is not None:
        line, column, char = unclosed
        closing = {"{": "}", "(": ")", "[": "]"}[char]
        notes = ((f"`{char}` opened here is never closed", _point_span(file, text, line, column)),)
        hint = f"add the missing `{closing}`"
    return Diagnostic("E003", "unexpected end of file", span, label="the file ends here",
                      hint=hint, notes=notes)


def _last_unclosed_bracket(text: str) -> tuple[int, int, str] | None:
    """Innermost bracket left open at the end of ``text`` (strings and comments skipped)."""
    stack: list[tuple[int, int, str]] = []
    line, column, i = 1, 1, 0
    in_string = in_comment = False
    while i < len(text):
        char = text[i]
        if in_comment:
            in_comment = char != "\n"
        elif in_string:
            if char == "\\":
                i, column = i + 1, column + 1
            elif char in "\"\n":
                in_string = False
        elif char == "#":
            in_comment = True
        elif char == '"':
            in_string = True
        elif char in "{([":
            stack.append((line, column, char))
        elif char in "})]" and stack:
            stack.pop()
        if char == "\n":
            line, column = line + 1, 1
        else:
            column += 1
        i += 1
    return stack[-1] if stack else None


# ---- tree → AST -------------------------------------------------------------------------------


@v_args(meta=True, inline=True)
class _Builder(Transformer):
    """Builds ``ast`` nodes; literal errors (bad escapes) are collected, not raised."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file
        self.errors: list[Diagnostic] = []

    def _span(self, meta: Meta) -> ast.Span | None:
        if getattr(meta, "empty", True):
            return None
        return ast.Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column,
                        meta.start_pos, meta.end_pos)

    def _name(self, token: Token) -> str:
        """A declared name; reserved words are refused even where the lexer let one through."""
        if token in RESERVED:
            self.errors.append(Diagnostic(
                "E004", f"`{token}` is a keyword and cannot be used as a name",
                self._token_span(token), hint=f"rename it, e.g. `{token}_`"))
        return str(token)

    def _token_span(self, token: Token) -> ast.Span:
        return ast.Span(self.file, token.line, token.column, token.end_line, token.end_column,
                        token.start_pos, token.end_pos)

    def _string(self, token: Token) -> str:
        try:
            value = json.loads(token.value, strict=False)  # a raw tab is a tab
            value.encode("utf-8")  # `\ud800` alone is half a character: no path or text holds it
            return value
        except json.JSONDecodeError:
            self.errors.append(Diagnostic(
                "E004", "invalid escape in string", self._token_span(token),
                hint=r'escapes are \" \\ \/ \n \t \r \b \f and \uXXXX'))
        except UnicodeEncodeError:
            self.errors.append(Diagnostic(
                "E004", "a `\\u` escape in this string is half of a surrogate pair",
                self._token_span(token),
                hint=r"write the character itself, or both halves: \ud83d\ude00"))
        return token.value[1:-1]

    # items
    @v_args(meta=True)
    def start(self, meta, items):
        return list(items)

    def use_module(self, meta, module_path, alias):
        return ast.Use(module=tuple(module_path), file=None,
                       alias=self._name(alias) if alias else None, span=self._span(meta))

    def use_file(self, meta, path, alias):
        return ast.Use(module=None, file=self._string(path),
                       alias=self._name(alias) if alias else None, span=self._span(meta))

    @v_args(meta=True)
    def module_path(self, meta, names):
        return [str(n) for n in names]

    def let(self, meta, name, value):
        return ast.Let(self._name(name), value, span=self._span(meta))

    def model(self, meta, name, value):
        return ast.ModelDecl(self._name(name), value, span=self._span(meta))

    def corpus(self, meta, name, value):
        return ast.CorpusDecl(self._name(name), value, span=self._span(meta))

    def ability(self, meta, name, body):
        return ast.AbilityDecl(self._name(name), body, span=self._span(meta))

    def surgery_block(self, meta, name, output, body):
        return ast.Surgery(self._name(name), self._string(output), body=body, span=self._span(meta))

    def surgery_apply(self, meta, name, output, call):
        return ast.Surgery(self._name(name), self._string(output), apply=call, span=self._span(meta))

    @v_args(meta=True)
    def recipe(self, meta, children):
        name, *params = children
        params = tuple(p for p in params[:-1] if p is not None)
        return ast.Recipe(self._name(name), params, children[-1], span=self._span(meta))

    def param(self, meta, name, default):
        return ast.Param(self._name(name), default, span=self._span(meta))

    # statements
    @v_args(meta=True)
    def block(self, meta, stmts):
        return tuple(stmts)

    def field(self, meta, name, value):
        return ast.Field(str(name), value, span=self._span(meta))

    def transfer(self, meta, ability, donor, body):
        return ast.Transfer(ability, donor, body, span=self._span(meta))

    def merge(self, meta, method, donors, body):
        return ast.Merge(str(method), donors, body, span=self._span(meta))

    def finetune(self, meta, body):
        return ast.Finetune(body, span=self._span(meta))

    def expect(self, meta, condition):
        return ast.Expect(condition, span=self._span(meta))

    def scope_global(self, meta, value):
        return ast.Scoped(value, "global", span=self._span(meta))

    def scope_per(self, meta, value, scope):
        return ast.Scoped(value, str(scope), span=self._span(meta))

    # expressions
    def compare(self, meta, left, op, right):
        return ast.Compare(str(op), left, right, span=self._span(meta))

    def add(self, meta, left, right):
        return ast.BinOp("+", left, right, span=self._span(meta))

    def sub(self, meta, left, right):
        return ast.BinOp("-", left, right, span=self._span(meta))

    def mul(self, meta, left, right):
        return ast.BinOp("*", left, right, span=self._span(meta))

    def div(self, meta, left, right):
        return ast.BinOp("/", left, right, span=self._span(meta))

    def neg(self, meta, operand):
        return ast.Neg(operand, span=self._span(meta))

    @v_args(meta=True)
    def call(self, meta, children):
        func, *args = children
        args = [a for a in args if a is not None]
        positional = tuple(a for a in args if not isinstance(a, ast.KwArg))
        keywords = tuple(a for a in args if isinstance(a, ast.KwArg))
        first_keyword = next((i for i, a in enumerate(args) if isinstance(a, ast.KwArg)), None)
        if first_keyword is not None and any(not isinstance(a, ast.KwArg)
                                             for a in args[first_keyword:]):
            late = next(a for a in args[first_keyword:] if not isinstance(a, ast.KwArg))
            self.errors.append(Diagnostic(
                "E007", "positional argument after a keyword argument", late.span,
                hint="put positional arguments first, or name this one"))
        return ast.Call(func, positional, keywords, span=self._span(meta))

    def kwarg(self, meta, name, value):
        return ast.KwArg(str(name), value, span=self._span(meta))

    @v_args(meta=True)
    def list(self, meta, items):
        return ast.ListExpr(tuple(i for i in items if i is not None), span=self._span(meta))

    @v_args(meta=True)
    def path(self, meta, parts):
        return ast.Path(tuple(str(p) for p in parts), span=self._span(meta))

    def star(self, meta, *_):
        return "*"

    # literals
    def string(self, meta, token):
        return ast.Str(self._string(token), span=self._span(meta))

    def _integer(self, token: Token) -> int:
        try:
            return int(token)
        except ValueError:  # over Python's limit on digits in an int conversion
            self.errors.append(Diagnostic("E004", "integer literal is too long",
                                          self._token_span(token)))
            return 0

    def int(self, meta, token):
        return ast.Int(self._integer(token), span=self._span(meta))

    def float(self, meta, token):
        return ast.Float(float(token), span=self._span(meta))

    def percent(self, meta, token):
        return ast.Percent(float(token[:-1]), span=self._span(meta))

    def size(self, meta, token):
        number = token.rstrip("KMGTiB")
        return ast.Size(float(number), str(token)[len(number):], span=self._span(meta))

    def range(self, meta, start, stop):
        return ast.Range(self._integer(start), self._integer(stop), span=self._span(meta))

    def true(self, meta):
        return ast.Bool(True, span=self._span(meta))

    def false(self, meta):
        return ast.Bool(False, span=self._span(meta))
