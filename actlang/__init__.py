"""actlang: a declarative language and compiler for ability surgery on language models."""

__version__ = "0.1.0"
