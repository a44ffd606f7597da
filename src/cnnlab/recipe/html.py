"""Small HTML pieces the recipe's report sections share: escaping, headings, embedded images."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any


def img(path: Path | None) -> str:
    """``<img>`` with the PNG embedded as a data URI (``""`` when there is no file)."""
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img alt='{esc(Path(path).stem)}' src='data:image/png;base64,{data}'>"


def h2(text: str) -> str:
    """A section heading."""
    return f"<h2>{esc(text)}</h2>"


def esc(value: Any) -> str:
    """``value`` as text, HTML-escaped."""
    return html.escape(str(value), quote=True)


def num(value: Any) -> str:
    """A number short enough for a table (4 significant digits); ``""`` for None."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 trial``, ``3 trials`` (``many``: an irregular plural)."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"


def params(values: dict[str, Any]) -> str:
    """``optim.lr=0.05, model.dropout=0.1`` (a value left unset: ``model.dropout=default``)."""
    return ", ".join(f"{k}={'default' if v is None else num(v)}" for k, v in values.items())


def verdict(passed: bool | None) -> str:
    """pass / FAIL in colour, or a grey "done" for a step that only measures."""
    if passed is None:
        return "<span class='info'>done</span>"
    return "<span class='pass'>pass</span>" if passed else "<span class='fail'>FAIL</span>"
