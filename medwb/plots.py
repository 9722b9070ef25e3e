"""Figures embedded in the self-contained HTML reports (comparison, evaluation, usage)."""
from __future__ import annotations

import base64
import io


def png_base64(fig, dpi: int = 90) -> str:
    """The figure as a base64 PNG for an ``<img src="data:image/png;base64,...">``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")
