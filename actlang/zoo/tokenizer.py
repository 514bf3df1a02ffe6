"""A word-level tokenizer for the zoo, built locally (no download).

:func:`build_tokenizer` returns a ``transformers.PreTrainedTokenizerFast`` over a
``tokenizers`` ``WordLevel`` model: text is split on whitespace, each word is one token.
Special tokens have fixed ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3; the
post-processor prepends ``<bos>`` (and never appends ``<eos>``, so a prompt can be continued;
training text appends it explicitly).  Decoding joins words with single spaces, so
``decode(encode(t), skip_special_tokens=True) == " ".join(t.split())`` for in-vocabulary text.
Padding is on the left (for batched generation).  It is saved next to each model with
``save_pretrained`` and loads back with ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

__all__ = ["SPECIAL_TOKENS", "PAD", "BOS", "EOS", "UNK", "build_tokenizer"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)


def build_tokenizer(words: Sequence[str], model_max_length: int = 128) -> PreTrainedTokenizerFast:
    """Word-level tokenizer whose vocabulary is the special tokens then ``words`` in order."""
    vocab: dict[str, int] = {}
    for w in (*SPECIAL_TOKENS, *words):
        if any(c.isspace() for c in w) or not w:
            raise ValueError(f"not a word: {w!r}")
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=model_max_length,
    )
