"""A self-contained report.html: the table and every plot inline (base64 PNG), no script, no fetches."""
from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; }
td:not(:first-child), th:not(:first-child) { text-align: right; }
th { background: #f2f2f2; }
figure { margin: 1.5em 0; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #555; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; }
"""


def render_html(title: str, notes: list[str], header: list[str], rows: list[tuple[str, ...]],
                images: list[tuple[str, Path]], opening: str = "") -> str:
    """opening: trusted HTML shown first (a run's verdict: pipelines/report_verdict.py)."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    figures = "".join(
        f'<figure><img alt="{e(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(Path(p).read_bytes()).decode()}"><figcaption>{e(caption)}</figcaption></figure>'
        for caption, p in images
    )
    note_html = "".join(f'<p class="note">{e(n)}</p>' for n in notes)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{STYLE}</style></head><body><h1>{e(title)}</h1>{opening}{note_html}'
            f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{figures}'
            "</body></html>\n")
