"""The report's building blocks: a tiny document model rendered to Markdown and to one
self-contained HTML file, a fixed colour and order per score kind, figures saved atomically,
citations of MATH.md, and the complete score arrays of ``scores.zarr``.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nldist.store.dataset import open_arrays
from nldist.store.remote import as_path, write_bytes_atomic

KIND_ORDER = ("nonlinear-leverage", "nonlinear-norm", "linear-leverage", "linear-norm",
              "linear-leverage+y", "ridge-leverage", "pilot", "uniform")
_COLORS = {"nonlinear-leverage": "#1f77b4", "nonlinear-norm": "#ff7f0e",
           "linear-leverage": "#2ca02c", "linear-norm": "#d62728", "uniform": "#9467bd",
           "ridge-leverage": "#8c564b", "pilot": "#e377c2", "loss": "#7f7f7f",
           "linear-leverage+y": "#bcbd22", "random": "#17becf", "influence": "#008b8b",
           "influence-mix": "#6a3d9a"}
_EXTRA = ("#17becf", "#bcbd22", "#7f7f7f", "#e377c2", "#8c564b")
MAX_TABLE_FEATURES = 12


def savefig(fig: Any, path: Path) -> None:
    """Save a figure through a temporary file and a rename (never a truncated PNG), then
    close it (pyplot keeps every open figure alive)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png")
    write_bytes_atomic(path, buf.getvalue())
    pyplot().close(fig)


def kind_color(kind: str) -> str:
    """A fixed colour per score kind, the same in every plot."""
    if kind in _COLORS:
        return _COLORS[kind]
    return _EXTRA[sum(map(ord, kind)) % len(_EXTRA)]


def ordered_kinds(kinds: list[str] | tuple[str, ...]) -> list[str]:
    """Kinds in the canonical order (nonlinear first, uniform last), unknown ones after."""
    known = [k for k in KIND_ORDER if k in kinds]
    return known + [k for k in kinds if k not in KIND_ORDER]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------
# A tiny document model rendered to Markdown and to self-contained HTML
# --------------------------------------------------------------------------------------


@dataclass
class Doc:
    """Blocks of a report: headings, paragraphs, tables, figures, code."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        """A paragraph; ``**bold**`` and ```code``` are rendered in both formats."""
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]], bold: set | None = None) -> None:
        """A table of strings; ``bold`` holds (row, column) cells to emphasise."""
        self.blocks.append(("table", (header, rows, bold or set())))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("fig", (as_path(path), caption)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    # -- Markdown --------------------------------------------------------------------
    def markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for kind, val in self.blocks:
            if kind == "h":
                out += [f"{'#' * val[0]} {val[1]}", ""]
            elif kind == "p":
                out += [val, ""]
            elif kind == "table":
                header, rows, bold = val
                out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                out.append("|" + "---|" * len(header))
                for i, row in enumerate(rows):
                    cells = [f"**{_md_cell(c)}**" if (i, j) in bold else _md_cell(c)
                             for j, c in enumerate(row)]
                    out.append("| " + " | ".join(cells) + " |")
                out.append("")
            elif kind == "fig":
                path, caption = val
                rel = path.relative_to(base) if path.is_relative_to(base) else path
                out += [f"![{caption}]({rel.as_posix()})", "", f"*{caption}*", ""]
            elif kind == "code":
                out += ["```", val, "```", ""]
        return "\n".join(out).rstrip() + "\n"

    # -- HTML --------------------------------------------------------------------------
    def html(self) -> str:
        body = []
        for kind, val in self.blocks:
            if kind == "h":
                level, text = val
                anchor = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
                body.append(f'<h{level} id="{anchor}">{_inline(text)}</h{level}>')
            elif kind == "p":
                body.append(f"<p>{_inline(val)}</p>")
            elif kind == "table":
                header, rows, bold = val
                head = "".join(f"<th>{_inline(h)}</th>" for h in header)
                trs = []
                for i, row in enumerate(rows):
                    tds = "".join(
                        f'<td class="{"best" if (i, j) in bold else ""}">{_inline(c)}</td>'
                        for j, c in enumerate(row))
                    trs.append(f"<tr>{tds}</tr>")
                body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                            f'<tbody>{"".join(trs)}</tbody></table></div>')
            elif kind == "fig":
                path, caption = val
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(caption)}" '
                            f'src="data:image/png;base64,{data}"/>'
                            f"<figcaption>{_inline(caption)}</figcaption></figure>")
            elif kind == "code":
                body.append(f"<pre>{html.escape(val)}</pre>")
        return _HTML.format(title=html.escape(self.title), body="\n".join(body))


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _inline(text: str) -> str:
    out = html.escape(str(text))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
  margin: 0 auto; max-width: 1120px; padding: 1.5em 2em 4em; color: #1d2330;
  background: #fbfbfd; line-height: 1.45; }}
h1 {{ border-bottom: 3px solid #1f77b4; padding-bottom: .3em; }}
h2 {{ margin-top: 1.8em; border-bottom: 1px solid #d5d9e2; padding-bottom: .2em; }}
table {{ border-collapse: collapse; font-size: 0.86em; margin: .6em 0 1.2em; }}
th, td {{ border: 1px solid #d5d9e2; padding: .25em .6em; text-align: right;
  white-space: nowrap; }}
th {{ background: #e9eef7; }}
td:first-child, th:first-child {{ text-align: left; }}
tr:nth-child(even) td {{ background: #f3f5f9; }}
td.best {{ background: #d9f2d9 !important; font-weight: bold; }}
.scroll {{ overflow-x: auto; }}
figure {{ margin: 1em 0 1.6em; }}
figure img {{ max-width: 100%; border: 1px solid #d5d9e2; background: white; }}
figcaption {{ color: #555; font-size: .9em; }}
code, pre {{ background: #eef1f6; border-radius: 3px; padding: 0 .25em; }}
pre {{ padding: .6em; overflow-x: auto; }}
</style></head>
<body>
<h1>{title}</h1>
{body}
</body></html>
"""



#: where the report's equations are written down (in the nldist repository)
MATH_REF = "docs/MATH.md"


def math_ref(*sections: int) -> str:
    """A citation of the mathematics page in the repository (``docs/MATH.md``)."""
    return f"`{MATH_REF}` " + " and ".join(f"§{s}" for s in sections)


def open_scores(store: Path) -> dict[str, Any]:
    """{kind: zarr array} of the complete score arrays in OUT/scores.zarr."""
    arrays = {a.attrs.get("kind", name): a for name, a in open_arrays(store).items()}
    return {k: arrays[k] for k in ordered_kinds(list(arrays))
            if arrays[k].attrs.get("complete", True)}
