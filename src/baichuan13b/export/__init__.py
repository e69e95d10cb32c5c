"""Exports to other runtimes' formats: GGUF for llama.cpp (:func:`export_gguf`)."""

from .gguf import OUTTYPES, GGUFExportError, export_gguf, llama_cpp_position

__all__ = ["OUTTYPES", "GGUFExportError", "export_gguf", "llama_cpp_position"]
