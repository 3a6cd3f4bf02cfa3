"""What a compiled XLA program holds in memory at once, from its memory analysis."""

from __future__ import annotations


def compiled_memory(compiled) -> dict[str, int]:
  """XLA's memory analysis of ``compiled`` (``jit(f).lower(...).compile()``) in bytes:
  ``peak`` = arguments + temporaries + outputs not written over donated arguments
  (``aliased``), and those parts. XLA:CPU's buffer assignment; an accelerator's compiler
  assigns its own, so read it as an estimate there."""
  analysis = compiled.memory_analysis()
  parts = {"arguments": int(analysis.argument_size_in_bytes),
           "outputs": int(analysis.output_size_in_bytes),
           "aliased": int(analysis.alias_size_in_bytes),
           "temporaries": int(analysis.temp_size_in_bytes)}
  peak = parts["arguments"] + parts["temporaries"] + parts["outputs"] - parts["aliased"]
  return {"peak": peak, **parts}
