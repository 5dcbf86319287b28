"""One self-contained HTML page, the shell the demo's ``report.html`` and ``analyze``'s
``report.html`` share: a common style, a title with the time written, and PNGs embedded as data
URIs, so that a page travels as one file."""

import base64
import html
from datetime import datetime, timezone

_STYLE = """body {{ font-family: system-ui, sans-serif; max-width: {width}px; margin: 2em auto; \
color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }} code {{ font-size: 0.85em; }}
"""


def page(title: str, body: str, *, intro: str = "", width: int = 1100, css: str = "") -> str:
    """An HTML document: ``<h1>title</h1>``, a line with the time written (UTC, to the minute) and
    ``intro`` (HTML), then ``body`` (HTML).

    Args:
        width: the page's maximum width, in CSS pixels.
        css: rules added to the common style (a page's own tables and figures).
    """
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    style = _STYLE.format(width=width) + css
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>\n'
            f"<style>\n{style}</style></head><body>\n"
            f"<h1>{title}</h1><p>Written {stamp}.{' ' + intro if intro else ''}</p>\n"
            f"{body}\n</body></html>\n")


def png_img(png: bytes, alt: str) -> str:
    """An ``<img>`` holding the PNG bytes ``png`` as a base64 data URI; ``alt`` is escaped."""
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
