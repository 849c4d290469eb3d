"""matplotlib figures drawn to PNG through the object API and the Agg canvas: no pyplot state, no display,
safe in a worker thread or a flow."""

from __future__ import annotations

import io
from dataclasses import dataclass

DPI = 100


@dataclass
class Plot:
    name: str  # the figure's id in the page
    title: str
    png: bytes
    caption: str = ""


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
