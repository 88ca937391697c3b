"""Self-contained HTML pieces: every image is inlined as a base64 PNG data URI, so a page opens from disk
with no network and no side files. Shared by the run report, the demo and the labeling contact sheets."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}h3{margin-top:1.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:8px}.tile{width:118px;font-size:.72em;text-align:center;
border:2px solid #cfc;padding:3px;border-radius:4px;overflow-wrap:anywhere}
.tile img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#eee}
.tile.bad{border-color:#e66}.tile.warn{border-color:#eb3}.plots img{max-width:100%;margin:4px}
.note{color:#666;font-size:.9em}
"""


def esc(value: Any) -> str:
    """HTML-escaped text of ``value``."""
    return html.escape(str(value))


def png_data_uri(image: np.ndarray | torch.Tensor, max_side: int = 160) -> str:
    """A ``data:image/png;base64,…`` URI of one uint8 image (C×H×W tensor or H×W[×C] array), shrunk so its
    longer side is at most ``max_side`` px (small images stay as they are; CSS scales them up pixelated)."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):  # C×H×W
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(arr.astype(np.uint8))
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return png_bytes_uri(buf.getvalue())


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_bytes_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_data_uri(fig: Any, dpi: int = 100) -> str:
    """A matplotlib figure as a PNG data URI (the figure is closed)."""
    return png_bytes_uri(figure_png(fig, dpi))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; cells are escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def tile(uri: str, caption: str, kind: str = "", title: str = "") -> str:
    """One captioned image of a grid; ``kind`` is '' (fine), 'bad' (a mistake) or 'warn' (doubtful);
    ``caption`` is HTML (escape what it holds)."""
    cls = f"tile {kind}".strip()
    return (f"<div class='{cls}' title='{esc(title)}'><img src='{uri}' alt='{esc(title or 'image')}'>"
            f"<div>{caption}</div></div>")


def grid(tiles: Iterable[str]) -> str:
    return f"<div class='grid'>{''.join(tiles)}</div>"


def plot_img(uri: str, alt: str) -> str:
    return f"<img src='{uri}' alt='{esc(alt)}'>"


def page(title: str, body: str) -> str:
    """A complete HTML document: inline CSS, no scripts, no external resources."""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{_CSS}</style></head>"
            f"<body>{body}</body></html>")
