"""Layer-streamed lock-step capture: paired statistics of models larger than memory.

:func:`~actlang.run.stats.collect_lockstep_stats` holds every model whole. Here each model is
built on the meta device (no memory) and only what is in use is real: the modules outside
the decoder layers (embeddings, rotary tables, final norm), one decoder layer of each model
at a time (read straight from its safetensors files), and the corpus's hidden states of each
model. So peak memory is about one layer per model plus the hidden states, whatever the
model's size::

    for every batch:  embed it (each model), record what each layer is called with
    for every layer:  load it (each model); for every batch: run the anchor's layer, then
                      each partner's (its hooks reduce partner - anchor); free the layer
    for every batch:  the final norm (each model)

The hooks are the in-memory capture's own (:class:`~actlang.run.stats._Capture`), fed the
same activations batch after batch, so the statistics equal the in-memory ones.

What a layer is called with — the attention mask for its attention type, the rotary
tables, the position ids — is recorded by running each decoder's own forward pass with its
layers swapped for recorders, so nothing of an architecture's layer loop is re-implemented.
Architectures whose checkpoints are converted on load (fused mixture-of-experts tensors)
are refused: their layers cannot be read tensor by tensor under their module names.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from actlang.arch.adapters import ChannelSpace, Entry, Naming
from actlang.arch.corpus import TokenizedCorpus
from actlang.arch.derived import decoder_layers
from actlang.arch.errors import RuntimeUserError
from actlang.run import stats as S
from actlang.run.checkpoint import Checkpoint
from actlang.run.corpus import Batch
from actlang.run.ranks import SINGLE, Ranks

__all__ = ["StreamedModel", "collect_lockstep_stats_streamed"]


class _Recorded(Exception):
    """Raised by the last recorder: the layers' inputs are known, the forward can stop."""


class _Recorder(nn.Module):
    """Stands in for decoder layer ``index`` during the recording pass: keeps what the layer
    is called with and passes the hidden states on. Attributes the decoder reads from its
    layers (``attention_type``, ...) come from the real layer."""

    def __init__(self, index: int, layer: nn.Module, calls: list[Any], last: bool):
        super().__init__()
        self.index, self.calls, self.last = index, calls, last
        self._layer = [layer]  # a list: not registered as a submodule

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_layer"][0], name)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        self.calls.append((hidden, args[1:], kwargs))
        if self.last:
            raise _Recorded
        return hidden


class StreamedModel:
    """A causal LM whose parameters live on the meta device until they are needed.

    Real from the start: buffers (rotary tables, embedding scales: computed when the model
    is built, never in a checkpoint) and the text decoder's parameters outside its layers
    (embeddings, final norm). A vision tower or any other part stays on meta: it never runs.

    Args:
        directory: a model directory (config.json and a safetensors checkpoint).
        naming: module names -> checkpoint names (the channel space's).
        dtype: the dtype to compute in (the checkpoint's tensors are cast to it).
        device: where the real parts live.
    """

    def __init__(self, directory: str | Path, naming: Naming = Naming(), *,
                 dtype: torch.dtype = torch.float32,
                 device: torch.device = torch.device("cpu")) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        self.directory, self.naming = Path(directory), naming
        self.dtype, self.device = dtype, device
        self.checkpoint = Checkpoint.open(self.directory)
        config = AutoConfig.from_pretrained(self.directory, trust_remote_code=False)
        with _parameters_on_meta():
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                          trust_remote_code=False)
        self.model.eval()
        for module in self.model.modules():  # buffers to the device; parameters stay meta
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = buffer.to(device)
        decoder_path, self.layers_prefix, self.layers = decoder_layers(
            self.model, config.get_text_config().num_hidden_layers)
        self.decoder = self.model.get_submodule(decoder_path) if decoder_path else self.model
        owner, _, self._layers_attribute = self.layers_prefix.rpartition(".")
        self._layers_owner = self.model.get_submodule(owner) if owner else self.model
        self._materialize_edges(decoder_path)

    def _inside_layers(self, name: str) -> bool:
        return name.startswith(self.layers_prefix + ".")

    def _tensor(self, name: str) -> torch.Tensor:
        stored = self.naming.to_checkpoint(name)
        if stored not in self.checkpoint:
            raise RuntimeUserError(
                f"{self.directory}: the checkpoint has no tensor `{stored}` (module "
                f"`{name}`)", hint="streamed capture reads each module's tensors under its "
                "own name; this architecture converts its checkpoint on load: capture it in "
                "memory")
        return self.checkpoint.get(stored).to(device=self.device, dtype=self.dtype)

    def _assign(self, module: nn.Module, prefix: str, locals_: Sequence[str]) -> None:
        """Give ``module``'s parameters (named locally; ``prefix`` + name in the model)
        their values from the checkpoint."""
        for local in locals_:
            owner_path, _, attribute = local.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            owner._parameters[attribute] = nn.Parameter(self._tensor(prefix + local),
                                                        requires_grad=False)

    def _materialize_edges(self, decoder_path: str) -> None:
        """The decoder's parameters outside its layers (the output head never runs)."""
        prefix = f"{decoder_path}." if decoder_path else ""
        self._assign(self.decoder, prefix, [n for n, _ in self.decoder.named_parameters()
                                            if not self._inside_layers(prefix + n)])

    @contextlib.contextmanager
    def layer(self, index: int) -> Iterator[nn.Module]:
        """Decoder layer ``index``, real for the duration of the block (then meta again)."""
        layer = self.layers[index]
        self._assign(layer, f"{self.layers_prefix}.{index}.",
                     [local for local, _ in layer.named_parameters()])
        try:
            yield layer
        finally:
            for module in layer.modules():  # parameters back to meta; buffers stay real
                for name, parameter in module._parameters.items():
                    if parameter is not None:
                        module._parameters[name] = nn.Parameter(
                            parameter.to("meta"), requires_grad=False)

    # -- passes

    def record(self, batch: Batch) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
        """The first layer's input and what each layer is called with (its arguments
        besides the hidden states), computed by the decoder's own forward pass with its
        layers swapped for recorders (the embedding's hooks fire; no layer's does)."""
        calls: list[Any] = []
        count = len(self.layers)
        setattr(self._layers_owner, self._layers_attribute, nn.ModuleList(
            [_Recorder(i, layer, calls, i == count - 1) for i, layer in enumerate(self.layers)]))
        try:
            self.decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         use_cache=False)
        except _Recorded:
            pass
        finally:
            setattr(self._layers_owner, self._layers_attribute, self.layers)
        assert len(calls) == count, "the decoder calls each of its layers once"
        return calls[0][0], [(args, kwargs) for _, args, kwargs in calls]



def collect_lockstep_stats_streamed(
    directories: Sequence[str | Path | StreamedModel],
    space: ChannelSpace,
    data: TokenizedCorpus | Sequence[Batch],
    *,
    entries: Sequence[Entry | str] | None = None,
    batch_size: int = 8,
    unpaired: bool = True,
    labels: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    meta: Mapping[str, str] | None = None,
    fields: Sequence[str] | None = None,
    unpaired_fields: Sequence[str] | None = None,
    local: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device = torch.device("cpu"),
    ranks: Ranks = SINGLE,
) -> list[S.PairedResult]:
    """:func:`~actlang.run.stats.collect_lockstep_stats` of the models in ``directories``
    (the anchor first; a directory, or a :class:`StreamedModel` already built), one decoder
    layer of each in memory at a time (module docs).

    Returns the same results, equal to the in-memory capture's. ``local`` differences work
    too: the partner's layer and the anchor's are in memory together. Under several
    ``ranks`` each streams the models over its share of the batches.
    """
    _return_freed_memory()
    models = [d if isinstance(d, StreamedModel) else
              StreamedModel(d, space.naming, dtype=dtype, device=device) for d in directories]
    batches = list(S._batches(data, batch_size))
    ents = S._resolve_entries(space, entries)
    head = models[0].model.get_output_embeddings()
    unreached = [e.key for e in ents if head is not None and
                 models[0].model.get_submodule(e.hook.module) is head]
    if unreached:
        raise RuntimeUserError(f"streamed capture runs the decoder, not its output head: "
                               f"{unreached[0]} has no statistics this way",
                               hint="leave lm_head out of the rule's channels, or capture in "
                                    "memory")
    final_norm = _final_norm(space)
    lockstep = S.lockstep_captures([m.model for m in models], ents, space, data,
                                   unpaired=unpaired, labels=labels, meta=meta, fields=fields,
                                   unpaired_fields=unpaired_fields, local=local, ranks=ranks)
    with lockstep as (captures, sums, results):
        share = list(sums.batches(batches, batch_size))  # this rank's, with their indices

        def each_model(index: int, batch: Batch, run: Callable[[int, StreamedModel], Any]) -> None:
            """``run`` for every model, the anchor first, its hooks set for batch ``index``."""
            with sums.batch(index):
                for position, (model, capture) in enumerate(zip(models, captures)):
                    capture.set_batch(batch.score_mask.to(device), device)
                    run(position, model)
                S.check_drained(captures)

        states: list[list[torch.Tensor]] = [[] for _ in models]
        calls: list[list[Any]] = [[] for _ in models]
        for index, batch in share:  # embeddings (hooked) and the layers' arguments
            def record(position: int, model: StreamedModel, batch: Batch = batch) -> None:
                hidden, layer_calls = model.record(batch.to(device))
                states[position].append(hidden)
                calls[position].append(layer_calls)
            each_model(index, batch, record)
        for layer_index in range(len(models[0].layers)):
            sums.next_phase()
            with contextlib.ExitStack() as stack:
                layers = [stack.enter_context(m.layer(layer_index)) for m in models]
                for b, (index, batch) in enumerate(share):
                    def step(position: int, model: StreamedModel, b: int = b) -> None:
                        args, kwargs = calls[position][b][layer_index]
                        out = layers[position](states[position][b], *args, **kwargs)
                        states[position][b] = out[0] if isinstance(out, tuple) else out
                    each_model(index, batch, step)
        sums.next_phase()
        for b, (index, batch) in enumerate(share):
            if final_norm is not None:  # hooked like any module
                each_model(index, batch, lambda position, model, b=b: model.model.get_submodule(
                    final_norm)(states[position][b]))
            n = batch.n_scored
            S.COUNTERS.tokens_scored += n
            if progress:
                progress(n)
    _check_reached(results[0].paired, ents, batches if ranks.is_root else [b for _, b in share])
    return results


def _check_reached(stats: S.ChannelStats, entries: Sequence[Entry],
                   batches: Sequence[Batch]) -> None:
    """Every hooked module ran: one that runs after the layers but is not the final norm
    would otherwise keep all-zero statistics, a silent wrong answer. (An expert no token
    was routed to has none, rightly.)"""
    if not any(batch.n_scored for batch in batches):
        return
    silent = [e.key for e in entries
              if e.hook.expert is None and not bool(stats[e.key]["count"].any())]
    if silent:
        raise RuntimeUserError(f"streamed capture never ran the module of {silent[0]}",
                               hint="it runs outside the decoder layers: capture in memory")


def _return_freed_memory() -> None:
    """Have glibc give freed blocks of 128 KB and up back to the system at once. By default
    it raises that threshold as large blocks are freed (up to 32 MB), so a layer's freed
    tensors would stay in the heap and the next layer's come on top: streaming frees a
    layer after every layer, and its peak is what it is only if the memory goes back."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its allocator decides
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 128 * 1024)
    libc.mallopt(m_trim_threshold, 128 * 1024)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build a model with its parameters on the meta device and its buffers real."""
    try:
        from accelerate import init_empty_weights
    except ImportError:
        raise RuntimeUserError("streamed capture builds models with accelerate, which is not "
                               "installed", hint="pip install 'actlang[real]'") from None
    with init_empty_weights(include_buffers=False):
        yield


def _final_norm(space: ChannelSpace) -> str | None:
    """The module path of the decoder's final norm (what runs after the last layer)."""
    return next((e.hook.module for e in space if e.kind == "norm.final" and e.hook), None)
