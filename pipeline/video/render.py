"""``analyze --render``: the source video again, with each subject's face box and predictions drawn.

Frames are decoded by the same reader as ``faces`` (same order, same upright frames, so the records'
boxes fit), enlarged so that the text stays legible on small videos, drawn with PIL and encoded with
PyAV (H.264 where the FFmpeg build has libx264, else MPEG-4 Part 2). Each frame keeps its source
time stamp (millisecond time base), so variable frame rate plays as filmed. Written to a temporary
name, then renamed.
"""

import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from pipeline.data.affwild2 import AU_NAMES
from pipeline.video import require
from pipeline.video.decode import iter_frames

MIN_SIDE = 360  # pixels: smaller videos are enlarged by a whole factor
TIME_BASE = Fraction(1, 1000)
COLOURS = ((255, 215, 0), (0, 200, 255))


def _caption(table: dict, i: int) -> list[str]:
    """The predictions of row i of a per-frame table as short lines."""
    lines = []
    if "valence" in table:
        lines.append(f"V {table['valence'][i]:+.2f}  A {table['arousal'][i]:+.2f}")
    if "expression" in table:
        lines.append(str(table["expression"][i]))
    if "AU1" in table:
        active = [a for a in AU_NAMES if table[a][i]]
        lines.append(" ".join(active) if active else "no AU")
    return lines


def render_video(source: Path, records: list[dict], tables: list[dict], out: Path,
                 progress: bool = True) -> Path:
    """Write ``out`` (.mp4): the source with every subject's box and predictions on each frame.

    Args:
        source: the video file ``faces`` read.
        records: the ``faces`` records of its output videos (boxes per frame).
        tables: their per-frame tables (``analyze.frame_table``), in the same order.
        out: the MP4 to write.
    """
    av = require("av")
    boxes = [dict(zip(r["frames"], r["boxes"])) for r in records]
    T = len(tables[0]["frame"])
    first = records[0]
    scale = max(1, math.ceil(MIN_SIDE / max(1, min(first["width"], first["height"]))))
    width, height = first["width"] * scale, first["height"] * scale
    width, height = width + width % 2, height + height % 2  # yuv420p needs even sides
    font = ImageFont.load_default(size=max(10, height // 30))
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    try:
        with av.open(str(tmp), "w") as container:
            rate = Fraction(first["rate"]) if first.get("rate") not in (None, "0") else Fraction(30)
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = TIME_BASE
            last_pts = -1
            for i, (image, t) in enumerate(tqdm(iter_frames(source), total=T, desc="render",
                                                unit="frame", disable=not progress, leave=False)):
                if i >= T:
                    break
                canvas = Image.fromarray(image).resize((first["width"] * scale,
                                                        first["height"] * scale),
                                                       Image.BILINEAR)
                frame_image = Image.new("RGB", (width, height))
                frame_image.paste(canvas)
                draw = ImageDraw.Draw(frame_image)
                for s, (box_of, table) in enumerate(zip(boxes, tables)):
                    box = box_of.get(i + 1)
                    if box is None:
                        continue
                    x1, y1, x2, y2 = (v * scale for v in box)
                    colour = COLOURS[s % len(COLOURS)]
                    draw.rectangle((x1, y1, x2, y2), outline=colour, width=max(2, scale))
                    text = "\n".join(_caption(table, i))
                    draw.multiline_text((x1, y2 + 4), text, fill=colour, font=font, stroke_width=2,
                                        stroke_fill=(0, 0, 0))
                frame = av.VideoFrame.from_ndarray(np.asarray(frame_image), format="rgb24")
                seconds = t if t is not None else float(tables[0]["time_s"][i])
                pts = max(last_pts + 1, round(seconds / TIME_BASE))
                frame.pts, frame.time_base, last_pts = pts, TIME_BASE, pts
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
