"""The torch-free floor under ``compile`` and ``run``.

What this package knows needs neither torch nor transformers, so ``actc check`` and
``actc plan`` stay light (a 70B plan reads headers, never weights):

* :mod:`actlang.arch.errors` — :class:`RuntimeUserError` (message + hint) for user mistakes.
* :mod:`actlang.arch.files` — which files of a model directory hold its weights.
* :mod:`actlang.arch.safetensors` — safetensors headers, checkpoint layouts, compatibility.
* :mod:`actlang.arch.adapters` — architecture adapters (JSON data) and :class:`ChannelSpace`.
* :mod:`actlang.arch.corpus` — documents, scored spans, tokenization to ids, digests.
* :mod:`actlang.arch.zoo` — where a zoo lives, what identifies it, its manifest.

* :mod:`actlang.arch.selection` — budgets and the channels a rule may choose from.
* :mod:`actlang.arch.registry` — the method's options (scores, granularities, merge methods,
  ...), each declared once.

Imports point down only: ``arch`` → ``lang`` → ``compile`` → ``run`` → ``zoo`` → ``cli``
(``tests/test_layers.py`` reads every import and fails on an arrow that points up).
"""
