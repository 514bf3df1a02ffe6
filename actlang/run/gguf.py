"""Converting a GGUF file into a standard Hugging Face model directory.

:func:`convert_gguf` turns a llama.cpp ``.gguf`` file into what the rest of actlang reads:
``config.json``, ``generation_config.json``, ``model.safetensors`` (float32: the dequantized
values, exactly) and the tokenizer files, chat template included. transformers does the
work — it dequantizes on load (with the ``gguf`` package for most architectures) and
rebuilds the tokenizer from the file's vocabulary — so what converts is what transformers
supports; :func:`actlang.arch.gguf.read_gguf_header` checks that first, in milliseconds,
before anything heavy is imported.

The directory is written atomically (:class:`actlang.run.output.atomic_output_dir`): into a
temporary sibling, renamed into place at the end, so an interrupted conversion never leaves
a directory that looks finished. Conversions are deterministic: the same file gives a
byte-identical ``model.safetensors``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from actlang.arch.errors import RuntimeUserError
from actlang.arch.gguf import read_gguf_header
from actlang.run.output import atomic_output_dir

__all__ = ["convert_gguf"]

# transformers' GGUF loader needs both: gguf to read and dequantize, accelerate to load
_REQUIRED = ("gguf", "accelerate")


def convert_gguf(path: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the GGUF file ``path`` as a Hugging Face model directory ``out_dir``.

    Args:
        path: the ``.gguf`` file.
        out_dir: the directory to create.
        overwrite: replace ``out_dir`` if it exists (otherwise that is an error).

    Returns:
        ``out_dir``, absolute.

    Raises:
        RuntimeUserError: the file is not a GGUF file transformers can convert, a package it
            needs is missing, ``out_dir`` exists, or transformers fails on the file.
    """
    path = Path(path)
    read_gguf_header(path, max_array=0)  # fail fast, before torch: a bad, cut or unsupported file
    _require_packages()
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        try:
            _save_model(path, tmp)
            _save_tokenizer(path, tmp)
        except (ValueError, NotImplementedError, OSError, RuntimeError) as err:
            raise RuntimeUserError(
                f"transformers could not convert {path}: {err}",
                hint="the file passed actlang's checks; a newer transformers may support it",
            ) from err
    return Path(out_dir).absolute()


def _require_packages() -> None:
    missing = [name for name in _REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeUserError(
            f"converting a GGUF file needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}",
            hint="pip install gguf accelerate",
        )


def _save_model(path: Path, out: Path) -> None:
    """Dequantize the file's weights into a float32 model and save it to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True, trust_remote_code=False,
    )
    # The loaded model carries a GGUF quantization_config, and save_pretrained refuses such
    # a model; a twin built from the config without it saves the same tensors. Built on the
    # meta device and given the loaded tensors (assign=True), it costs neither a second
    # copy of the weights nor a random initialization. Its non-persistent buffers (rotary
    # frequencies) stay on meta: they are not saved, and the twin is never run.
    config = loaded.config
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.save_pretrained(out)


def _save_tokenizer(path: Path, out: Path) -> None:
    """Rebuild the tokenizer (and chat template) from the file's vocabulary and save it to ``out``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(path.parent), gguf_file=path.name, local_files_only=True, trust_remote_code=False,
    )
    tokenizer.save_pretrained(out)
