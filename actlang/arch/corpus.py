"""Probe corpora: documents, scored spans, tokenization and content digests.

A :class:`Corpus` is a tuple of :class:`Document` (text plus the character spans that count;
``None`` means every token counts). Loaders::

    text_file("data/lang_b.txt", limit=256, seed=0)              # one document per line
    jsonl("data/math.jsonl", text="{q} {a}", score="a", limit=256, seed=0)
    inline(["2 + 3 = 5", "7 + 1 = 8"])
    mix([(math, 1.0), (lang_b, 3.0)], limit=400, seed=0)         # weighted mixture

``limit`` keeps that many documents — the first ones in file order, or a seeded random
sample when ``seed`` is given. In ``jsonl`` the template's fields are filled from each record
and the field named by ``score`` (or several, a list) marks the scored characters; the
scored characters become scored *tokens* through the tokenizer's offset mapping (a token
counts when its character span overlaps a scored span), so only answer tokens enter the
statistics.

``corpus.tokenize(tokenizer, max_length=512, max_tokens=None)`` returns a
:class:`TokenizedCorpus` — token ids with a per-token score flag and a stable content
:meth:`~TokenizedCorpus.digest` (for the statistics cache); ``max_length`` truncates each
document; ``max_tokens`` caps the total number of tokens. No torch here: the planner counts
tokens and digests corpora with this module, and :func:`actlang.run.corpus.batches` pads
them into tensors.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import stat
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

from actlang.arch.errors import RuntimeUserError

T = TypeVar("T")

__all__ = [
    "Corpus",
    "Document",
    "TokenizedCorpus",
    "inline",
    "jsonl",
    "mix",
    "text_file",
]

Span = tuple[int, int]


@dataclass(frozen=True)
class Document:
    """A text, and the character spans whose tokens are scored (``None``: all tokens)."""

    text: str
    spans: tuple[Span, ...] | None = None


def _take(docs: list[T], limit: int | None, seed: int | None) -> list[T]:
    if limit is not None and limit < 0:
        raise RuntimeUserError(f"limit must be >= 0, got {limit}")
    if seed is not None:
        docs = list(docs)
        random.Random(seed).shuffle(docs)
    return docs if limit is None else docs[:limit]


@dataclass(frozen=True)
class Corpus:
    """An ordered collection of documents with a descriptive name."""

    documents: tuple[Document, ...]
    name: str = "corpus"

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    def tokenize(
        self,
        tokenizer: Any,
        *,
        max_length: int = 512,
        max_tokens: int | None = None,
        add_special_tokens: bool = True,
    ) -> "TokenizedCorpus":
        """Tokenize every document; scored spans become per-token score flags."""
        needs_offsets = any(d.spans is not None for d in self.documents)
        if needs_offsets and not getattr(tokenizer, "is_fast", False):
            raise RuntimeUserError(
                f"corpus {self.name} marks scored spans, which needs a fast tokenizer (offset mapping)",
                hint="use a tokenizer with a tokenizer.json (PreTrainedTokenizerFast)",
            )
        seqs: list[tuple[list[int], list[bool]]] = []
        total = 0
        for doc in self.documents:
            if max_tokens is not None and total >= max_tokens:
                break
            kw: dict[str, Any] = dict(add_special_tokens=add_special_tokens, truncation=True, max_length=max_length)
            if doc.spans is not None:
                enc = tokenizer(doc.text, return_offsets_mapping=True, **kw)
                offsets = enc["offset_mapping"]
                flags = [
                    e > s and any(s < b and e > a for a, b in doc.spans) for s, e in offsets
                ]
            else:
                enc = tokenizer(doc.text, **kw)
                flags = [True] * len(enc["input_ids"])
            ids = list(enc["input_ids"])
            if not ids:
                continue
            if max_tokens is not None and total + len(ids) > max_tokens:
                ids, flags = ids[: max_tokens - total], flags[: max_tokens - total]
            seqs.append((ids, flags))
            total += len(ids)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        return TokenizedCorpus(seqs, pad_token_id=int(pad), name=self.name)


class TokenizedCorpus:
    """Token ids and per-token score flags of a corpus, and a content digest."""

    def __init__(self, sequences: Sequence[tuple[Sequence[int], Sequence[bool]]], *,
                 pad_token_id: int = 0, name: str = "corpus") -> None:
        self.sequences = [(list(i), [bool(f) for f in s]) for i, s in sequences]
        for ids, flags in self.sequences:
            assert len(ids) == len(flags)
        self.pad_token_id = pad_token_id
        self.name = name

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def n_tokens(self) -> int:
        return sum(len(i) for i, _ in self.sequences)

    @property
    def n_scored(self) -> int:
        return sum(sum(f) for _, f in self.sequences)

    def digest(self) -> str:
        """A stable SHA-256 of the token ids and score flags (independent of batching)."""
        h = hashlib.sha256(b"actlang-corpus-v1\0")
        for ids, flags in self.sequences:
            h.update(len(ids).to_bytes(4, "little"))
            h.update(b"".join(int(i).to_bytes(4, "little", signed=True) for i in ids))
            h.update(bytes(int(f) for f in flags))
        return h.hexdigest()

    def subset(self, indices: Sequence[int]) -> "TokenizedCorpus":
        return TokenizedCorpus([self.sequences[i] for i in indices], pad_token_id=self.pad_token_id, name=self.name)

    def split(self, at: int) -> tuple["TokenizedCorpus", "TokenizedCorpus"]:
        """The first ``at`` sequences and the rest."""
        n = len(self)
        return self.subset(range(0, min(at, n))), self.subset(range(min(at, n), n))

    def n_batches(self, batch_size: int = 8) -> int:
        return (len(self.sequences) + batch_size - 1) // batch_size


# --------------------------------------------------------------------------- loaders


def _read_lines(path: str | Path) -> list[str]:
    p = Path(path)
    try:
        kind = p.stat().st_mode
    except OSError as err:  # missing, a dangling link, a symbolic link loop, no permission
        what = "not found" if err.errno == errno.ENOENT else err.strerror
        raise RuntimeUserError(f"corpus file {p}: {what}") from None
    if not stat.S_ISREG(kind):  # a FIFO would block the read, a device never end
        what = "a directory" if stat.S_ISDIR(kind) else "not a regular file"
        raise RuntimeUserError(f"corpus file {p} is {what}",
                               hint="a corpus is a text or JSON-lines file")
    try:
        return p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise RuntimeUserError(f"corpus file {p} is not UTF-8 text: {err}") from None
    except OSError as err:
        raise RuntimeUserError(f"cannot read corpus file {p}: {err.strerror}") from None


def _nonempty(items: list[T], path: str | Path, what: str) -> list[T]:
    """``items`` (a file's documents or records) unless there are none: statistics,
    fine-tunes and evaluations over no document measure nothing."""
    if not items:
        raise RuntimeUserError(f"corpus file {path} holds no {what}: it is empty or blank",
                               hint="point the corpus at a file with data")
    return items


def text_file(path: str | Path, *, limit: int | None = None, seed: int | None = None) -> Corpus:
    """One document per non-empty line of a UTF-8 text file; every token is scored."""
    docs = [Document(line) for line in _read_lines(path) if line.strip()]
    return Corpus(tuple(_take(_nonempty(docs, path, "document"), limit, seed)),
                  name=Path(path).name)


def inline(lines: Sequence[str], *, limit: int | None = None, seed: int | None = None,
           name: str = "inline") -> Corpus:
    """Documents given as a list of strings; every token is scored."""
    if isinstance(lines, str):
        raise RuntimeUserError("inline() takes a list of lines, not one string")
    docs = [Document(str(line)) for line in lines if str(line).strip()]
    return Corpus(tuple(_take(docs, limit, seed)), name=name)


def _render(template: str, record: dict[str, Any], score_fields: set[str], where: str) -> Document:
    parts: list[str] = []
    spans: list[Span] = []
    pos = 0
    for literal, field, spec, conv in string.Formatter().parse(template):
        parts.append(literal)
        pos += len(literal)
        if field is None:
            continue
        if field not in record:
            raise RuntimeUserError(
                f"{where}: field {field!r} of the template {template!r} is missing",
                hint=f"the record has fields {sorted(record)}",
            )
        value = record[field]
        if conv == "r":
            value = repr(value)
        text = format(value, spec or "") if spec else str(value)
        if field in score_fields and text:
            spans.append((pos, pos + len(text)))
        parts.append(text)
        pos += len(text)
    return Document("".join(parts), tuple(spans) if score_fields else None)


def jsonl(
    path: str | Path,
    *,
    text: str = "{text}",
    score: str | Sequence[str] | None = None,
    limit: int | None = None,
    seed: int | None = None,
) -> Corpus:
    """Records of a JSON-lines file rendered through ``text`` (a ``str.format`` template).

    ``score`` names the template field(s) whose characters are scored (e.g. the answer);
    without it every token is scored.
    """
    score_fields = {score} if isinstance(score, str) else set(score or ())
    fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    missing = score_fields - fields
    if missing:
        raise RuntimeUserError(
            f"score field {sorted(missing)[0]!r} does not appear in the template {text!r}",
            hint="score names a field of the template, e.g. text=\"{q} {a}\", score=\"a\"",
        )
    docs = [_render(text, rec, score_fields, f"{path}:{n}") for n, rec in _records(path)]
    return Corpus(tuple(_take(docs, limit, seed)), name=Path(path).name)


def _records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every non-empty line of a JSON-lines file."""
    out = []
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise RuntimeUserError(f"{path}:{n}: not valid JSON: {err.msg}") from None
        if not isinstance(rec, dict):
            raise RuntimeUserError(f"{path}:{n}: expected a JSON object per line")
        out.append((n, rec))
    return _nonempty(out, path, "record")


def jsonl_records(path: str | Path, *, limit: int | None = None,
                  seed: int | None = None) -> list[dict[str, Any]]:
    """The raw records of a JSON-lines file, with ``limit`` / ``seed`` applied exactly as
    :func:`jsonl` applies them — so an evaluation reads the same items a corpus would."""
    return _take([rec for _, rec in _records(path)], limit, seed)


def mix(parts: Sequence[tuple[Corpus, float]], *, limit: int | None = None, seed: int = 0) -> Corpus:
    """A weighted mixture: document counts proportional to the weights (largest remainder).

    Without ``limit``, the mixture is as large as possible without repeating a document.
    Each part contributes its first documents (sample the parts with their own ``seed``);
    the mixture is then shuffled with ``seed``.
    """
    if not parts:
        raise RuntimeUserError("mix() needs at least one corpus")
    weights = [float(w) for _, w in parts]
    if any(w <= 0 for w in weights):
        raise RuntimeUserError(f"mix() weights must be positive, got {weights}")
    total_w = sum(weights)
    shares = [w / total_w for w in weights]
    if limit is None:
        limit = int(min(len(c) / s for (c, _), s in zip(parts, shares)) + 1e-9)
    exact = [s * limit for s in shares]
    counts = [int(x) for x in exact]
    order = sorted(range(len(parts)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: limit - sum(counts)]:
        counts[i] += 1
    docs: list[Document] = []
    for (corpus, _), k in zip(parts, counts):
        if k > len(corpus):
            raise RuntimeUserError(
                f"mix() needs {k} documents from {corpus.name}, which has {len(corpus)}",
                hint="lower the limit or that corpus' weight",
            )
        docs.extend(corpus.documents[:k])
    random.Random(seed).shuffle(docs)
    name = "mix(" + ", ".join(f"{c.name}:{w:g}" for c, w in parts) + ")"
    return Corpus(tuple(docs), name=name)
