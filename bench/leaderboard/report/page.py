"""The report's self-contained HTML page (figures as data URIs, inline CSS, no network) and the
writer of its figure files. An inline script records on ``<body>`` whether every image decoded
and how many script errors happened, and shows a banner when something is wrong, so a broken page
says so to its reader and to the browser test (docs/report.md)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.io import _atomic

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1500px;
       color: #222; padding: 0 16px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta, .caption, .note { color: #555; font-size: 0.9em; }
figure { margin: 12px 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.88em; margin-top: 4px; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td:nth-child(-n+3) { text-align: left; }
.scroll { overflow-x: auto; }
tr.reported td { color: #666; font-style: italic; }
.grids { display: flex; flex-wrap: wrap; gap: 18px; } .grids figure { width: 300px; }
.grids img { width: 300px; image-rendering: pixelated; }
#page-check { display: none; background: #fdd; border: 1px solid #c00; padding: 8px; }
"""

CHECK_SCRIPT = """
window.__reportErrors = 0;
window.addEventListener('error', function () { window.__reportErrors += 1; }, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-broken-images', String(broken.length));
  document.body.setAttribute('data-errors', String(window.__reportErrors));
  if (broken.length || window.__reportErrors) {
    var box = document.getElementById('page-check');
    box.textContent = broken.length + ' image(s) did not load, ' + window.__reportErrors + ' error(s) on this page';
    box.style.display = 'block';
  }
});
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cell(v: object) -> str:
    return "" if v is None else esc(v)


def _figure(png: bytes, caption: str, alt: str) -> str:
    img = f'<img src="{data_uri(png)}" alt="{esc(alt)}">'
    return f"<figure>{img}<figcaption>{esc(caption)}</figcaption></figure>"


@dataclass
class Section:
    """One section of the page; every text it is given is escaped here."""

    title: str
    parts: list[str] = field(default_factory=list)  # HTML fragments

    def figure(self, png: bytes, caption: str, alt: str) -> None:
        self.parts.append(_figure(png, caption, alt))

    def grid(self, items: list[tuple[bytes, str]]) -> None:
        """Images side by side, each with its caption."""
        figures = "".join(_figure(png, caption, caption) for png, caption in items)
        self.parts.append(f'<div class="grids">{figures}</div>')

    def paragraph(self, text: str, cls: str = "note") -> None:
        self.parts.append(f'<p class="{cls}">{esc(text)}</p>')

    def heading(self, text: str) -> None:
        self.parts.append(f"<h3>{esc(text)}</h3>")

    def table(self, columns: list[str], rows: list[list[object]], row_classes: list[str]) -> None:
        """A table that scrolls sideways; ``None`` cells stay empty."""
        head = "".join(f"<th>{esc(c)}</th>" for c in columns)
        body = []
        for row, cls in zip(rows, row_classes):
            attr = f' class="{esc(cls)}"' if cls else ""
            body.append(f"<tr{attr}>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        self.parts.append(f'<div class="scroll">{table}</div>')


def render_page(title: str, meta_lines: list[str], sections: list[Section]) -> str:
    toc = " · ".join(f'<a href="#s{i}">{esc(s.title)}</a>' for i, s in enumerate(sections))
    body = "\n".join(
        f'<section id="s{i}"><h2>{esc(s.title)}</h2>\n' + "\n".join(s.parts) + "</section>"
        for i, s in enumerate(sections)
    )
    meta = "".join(f'<div class="meta">{esc(line)}</div>' for line in meta_lines)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style><script>{CHECK_SCRIPT}</script></head>\n<body>"
        f'<div id="page-check"></div><h1>{esc(title)}</h1>{meta}<p class="meta">{toc}</p>\n{body}\n</body></html>\n'
    )


def read_png(path: Path) -> bytes | None:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return data if data.startswith(b"\x89PNG") else None


class Figures:
    """Writes each figure as PNG and SVG into ``folder`` (made here) and keeps the paths."""

    def __init__(self, folder: Path):
        self.folder, self.paths = folder, []
        folder.mkdir(parents=True, exist_ok=True)

    def save(self, fig, name: str) -> bytes:
        """Write ``fig`` as ``name``.png and .svg (atomically), close it and return the PNG."""
        blobs = {}
        try:
            for suffix, dpi in ((".png", 110), (".svg", "figure")):
                buf = io.BytesIO()
                fig.savefig(buf, format=suffix[1:], dpi=dpi)
                blobs[suffix] = buf.getvalue()
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)
        for suffix, data in blobs.items():
            self.paths.append(self.folder / f"{name}{suffix}")
            _atomic(self.paths[-1], lambda fh, d=data: fh.write(d))
        return blobs[".png"]
