"""What ``analyze`` shows: a PNG timeline per video and one self-contained HTML page over all
videos.

The timeline puts the per-frame table on the time axis (seconds, each frame at its own time stamp,
so variable frame rate is drawn as it was filmed): valence and arousal traces, the expression as a
colour strip, the AU probabilities as a heat map; frames without a face are shaded grey (their
values are the heads' fill, not a reading of a face). Figures use matplotlib's object API
(``Figure``), as ``pipeline.heads.plots`` does: no global state, safe headless; files are written
atomically.
"""

import html
import io
from pathlib import Path

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pipeline.data.affwild2 import AU_NAMES, EXPR_CLASSES
from pipeline.html_page import page, png_img
from pipeline.runs import atomic_write_bytes, atomic_write_text

EXPR_COLOURS = ("#9e9e9e", "#d62728", "#8c564b", "#9467bd", "#ffbf00", "#1f77b4", "#17becf",
                "#2ca02c")


def _edges(times: np.ndarray) -> np.ndarray:
    """(T + 1,) time edges of T frames: each frame lasts until the next; the last one period."""
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    return np.append(times, times[-1] + (step if step > 0 else 1.0))


def _absent_runs(face: np.ndarray, edges: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of each run of frames without a face."""
    absent = np.concatenate([[0], (face == 0).astype(np.int8), [0]])
    changes = np.flatnonzero(np.diff(absent))  # starts and ends alternate
    return [(edges[a], edges[b]) for a, b in zip(changes[::2], changes[1::2])]


def timeline_png(table: dict, title: str, path: Path) -> Path:
    """VA traces, the expression strip and the AU heat map of one video's table
    (``frame_table``)."""
    edges = _edges(np.asarray(table["time_s"], np.float64))
    rows = [r for r in ("va", "expr", "au")
            if {"va": "valence", "expr": "expression", "au": "AU1"}[r] in table]
    heights = {"va": 2.2, "expr": 0.9, "au": 2.6}
    fig = Figure(figsize=(12, 0.8 + sum(heights[r] for r in rows) if rows else 2),
                 layout="constrained")
    axes = fig.subplots(max(len(rows), 1), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [heights[r] for r in rows] or [1]})[:, 0]
    centres = (edges[:-1] + edges[1:]) / 2
    for ax, row in zip(axes, rows):
        if row == "va":
            ax.plot(centres, table["valence"], lw=1, color="tab:red", label="valence")
            ax.plot(centres, table["arousal"], lw=1, color="tab:blue", label="arousal")
            ax.axhline(0, color="black", lw=0.5)
            ax.set(ylim=(-1.05, 1.05), ylabel="VA")
            ax.legend(loc="upper right", fontsize=8, ncol=2)
        elif row == "expr":
            # (1, T)
            index = np.array([EXPR_CLASSES.index(c) for c in table["expression"]])[None, :]
            cmap = ListedColormap(EXPR_COLOURS)
            ax.pcolormesh(edges, [0, 1], index, cmap=cmap, norm=BoundaryNorm(np.arange(9) - 0.5, 8))
            ax.set(yticks=[], ylabel="Expr")
            ax.legend(handles=[Patch(color=c, label=n) for c, n in zip(EXPR_COLOURS, EXPR_CLASSES)],
                      loc="upper center", bbox_to_anchor=(0.5, -0.05), ncol=8, fontsize=7,
                      frameon=False)
        else:
            probs = np.stack([table[f"{a}_prob"] for a in AU_NAMES])  # (12, T)
            mesh = ax.pcolormesh(edges, np.arange(len(AU_NAMES) + 1), probs, cmap="viridis",
                                 vmin=0, vmax=1)
            ax.set_yticks(np.arange(len(AU_NAMES)) + 0.5, AU_NAMES, fontsize=7)
            ax.invert_yaxis()
            fig.colorbar(mesh, ax=ax, label="AU probability", pad=0.01)
        for start, end in _absent_runs(np.asarray(table["face"]), edges):
            ax.axvspan(start, end, color="grey", alpha=0.35 if row == "va" else 0.6, lw=0)
    if not rows:
        for start, end in _absent_runs(np.asarray(table["face"]), edges):
            axes[0].axvspan(start, end, color="grey", alpha=0.35, lw=0)
        axes[0].set(yticks=[])
    axes[-1].set_xlabel("time (s); grey: no face found")
    axes[0].set_title(title)
    axes[0].set_xlim(edges[0], edges[-1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def report_page(path: Path, videos: dict[str, dict], tables: dict[str, dict], out: Path,
                heads: dict, encoder: str) -> Path:
    """One self-contained HTML page (timelines embedded) over every analysed video; links are
    relative. A video whose record has ``warnings`` (``videos[name]["warnings"]``) is marked as
    damaged input, with the warnings; one without any face, as such (its predictions come from
    filled rows only)."""
    rows, sections = [], []
    for name, v in videos.items():
        damaged = ""
        if v.get("warnings"):
            damaged = ('<p class="damaged">damaged input: '
                       + "; ".join(html.escape(w) for w in v["warnings"])
                       + ". Frames are numbered as decoded; frames lost show as a jump in "
                       "<code>time_s</code>.</p>")
        if not v["faces"]:
            damaged += ('<p class="damaged">no face in any frame: every prediction of this video '
                        "comes from the head's fill rule for frames without a face, not from a "
                        "face; leave it out of any average.</p>")
        table = tables[name]
        duration = float(table["time_s"][-1] - table["time_s"][0]) if len(table["time_s"]) else 0.0
        share = v["faces"] / v["frames"] if v["frames"] else 0.0
        links = [f'<a href="{html.escape(v["csv"])}">CSV</a>']
        if "mp4" in v:
            links.append(f'<a href="{html.escape(v["mp4"])}">MP4</a>')
        mark = "".join(m for m, on in ((" (damaged input)", v.get("warnings")),
                                       (" (no face)", not v["faces"])) if on)
        rows.append(f"<tr><td><a href=\"#{html.escape(name)}\">{html.escape(name)}</a>{mark}</td>"
                    f"<td>{html.escape(Path(v['source']).name)}</td><td>{v['frames']}</td>"
                    f"<td>{duration:.1f}</td>"
                    f"<td>{v['faces']} ({share:.0%})</td><td>{' '.join(links)}</td></tr>")
        sections.append(f'<section id="{html.escape(name)}"><h2>{html.escape(name)}</h2>'
                        f"<p>{html.escape(v['source'])}: {v['frames']} frames at {v['fps']:.2f} "
                        f"frames/s, a face in {v['faces']} ({share:.0%}). {' '.join(links)}</p>"
                        + damaged + png_img((Path(out) / v["png"]).read_bytes(), f"{name} timeline")
                        + "</section>")
    heads_list = "".join(f"<li>{task}: <code>{html.escape(run)}</code></li>"
                         for task, run in heads.items())
    body = (f"<p>Encoder <code>{html.escape(encoder)}</code>; heads:</p><ul>{heads_list}</ul>"
            "<table><tr><th>video</th><th>source</th><th>frames</th><th>seconds</th>"
            "<th>faces</th><th>files</th></tr>"
            + "".join(rows) + "</table>" + "".join(sections))
    atomic_write_text(Path(path), page("mae-affect analyze", body, intro=_INTRO, width=1250,
                                       css="td:nth-child(2) { text-align: left; }\n"
                                           ".damaged { color: #b00020; }\n"))
    return Path(path)


_INTRO = ("Frames without a face carry the heads' fill (the nearest face's features, as in "
          "training and in submissions) and are marked <code>face=0</code> in the CSVs.")
