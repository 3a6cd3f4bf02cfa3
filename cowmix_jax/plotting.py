"""matplotlib for the tools that draw charts (the ``plots`` extra), without a display."""


def pyplot(tool: str):
  """``matplotlib.pyplot`` on the Agg backend; SystemExit naming ``tool`` and the extra to
  install when matplotlib is missing."""
  try:
    import matplotlib
  except ImportError as error:
    raise SystemExit(f"{tool} needs matplotlib: pip install -e \".[plots]\"") from error
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save(plt, figure, path: str, dpi: int = 110) -> None:
  """Lays ``figure`` out tightly, writes it to ``path`` and frees it."""
  figure.tight_layout()
  figure.savefig(path, dpi=dpi)
  plt.close(figure)
