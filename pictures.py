"""Pictures to look at: contact sheets (images with boxes, text below) and training curves from log.jsonl files.

synthetic.py draws its studies with contact_sheet, evaluate.py its test images (gold and predicted boxes) and the
runs' curves with draw_curves, sample.py the model's answers. Those two functions are the interface; the helpers
below them (nice_ticks, smooth, panel_layout, clip_box) are named so the tests can check the geometry without
reading pixels. Pillow and numpy only: no matplotlib, and no torch, so drawing never waits on a model import.
"""

import json
import math
import os
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LINE_HEIGHT = 12  # px per line of Pillow's default font (glyphs are about 5.5 px wide, 12 high)
GAP = 4  # px of gray around each contact-sheet tile
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
PANELS = [("sampled reward", ("reward_report", "reward_grounding"), False),  # (title, keys, log y-axis)
          ("held-out greedy reward", ("val_reward_report", "val_reward_grounding"), False),
          ("loss", ("loss", "val_loss"), True),  # the SFT loss falls from ~7 to ~0.3: linear, its end is flat
          ("GRPO health: fractions", ("zero_var_frac", "truncated_frac", "clip_frac_low", "clip_frac_high"), False),
          ("KL to the reference, and rollout / training mismatch", ("kl", "mismatch_kl"), True)]
FEW_POINTS = 30  # a series with fewer points (e.g. held-out rewards every 25 steps) is drawn as dots, unsmoothed


def contact_sheet(tiles, path, cols=4, side=192, text_lines=8):
    """A PNG grid of tiles {"image": PIL image or uint8 array (HxW or HxWx3), "boxes": [(box, color, label)],
    "lines": [(text, color)]}: the image with its longer side `side` px, boxes in 0-1 coordinates drawn over it,
    and below it the lines wrapped to the tile width, at most `text_lines` in all."""
    if not tiles:
        raise ValueError(f"contact_sheet: no tiles to draw into {path}")
    font = ImageFont.load_default()
    drawn = [draw_tile(tile, side, text_lines, font) for tile in tiles]
    tile_width, tile_height = drawn[0].size
    rows = math.ceil(len(drawn) / cols)
    sheet = Image.new("RGB", (cols * (tile_width + GAP) + GAP, rows * (tile_height + GAP) + GAP), "#606060")
    for i, picture in enumerate(drawn):
        sheet.paste(picture, (GAP + (i % cols) * (tile_width + GAP), GAP + (i // cols) * (tile_height + GAP)))
    save(sheet, path)


def draw_tile(tile, side, text_lines, font):
    image = tile["image"]
    image = (Image.fromarray(image) if isinstance(image, np.ndarray) else image).convert("RGB")
    scale = side / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    picture = Image.new("RGB", (side, side + LINE_HEIGHT * text_lines + 4), "black")
    picture.paste(image)
    draw = ImageDraw.Draw(picture)
    w, h = image.width - 1, image.height - 1  # a box edge at 1.0 is the image's last pixel, not one past it
    for box, color, label in tile.get("boxes", []):
        x0, y0, x1, y1 = clip_box(box)
        draw.rectangle([x0 * w, y0 * h, x1 * w, y1 * h], outline=color, width=2)
        if label:
            draw.text((x0 * w + 3, y0 * h + 2), label, fill=color, font=font)
    wrapped = [(part, color) for text, color in tile.get("lines", []) for part in textwrap.wrap(text, side // 6)]
    for k, (line, color) in enumerate(wrapped[:text_lines]):
        draw.text((3, side + 2 + LINE_HEIGHT * k), line, fill=color, font=font)
    return picture


def clip_box(box):
    """[x_min, y_min, x_max, y_max] inside 0-1 with its corners sorted: a model may write anything."""
    (x0, x1), (y0, y1) = sorted(np.clip([box[0], box[2]], 0, 1)), sorted(np.clip([box[1], box[3]], 0, 1))
    return float(x0), float(y0), float(x1), float(y1)


def draw_curves(log_paths, path, width=720, height=300, panels=PANELS):
    """Curves against step from log.jsonl files (a run is named by its folder: out/sft/log.jsonl -> "sft"), one
    panel of `height` px for each of `panels` (title, log keys, log y-axis) that some log has; by default PANELS:
    the sampled reward, the greedy reward on held-out prompts, the loss on a log axis (linear if a value is <= 0, as
    GRPO's loss can be), GRPO's health fractions and its KL. Each series is its raw
    values as a faint line under a centred moving average of them (see smooth); a series of under FEW_POINTS
    points is its points joined, with dots. The legend sits in a column right of the plot, covering no data.
    NaN, inf and non-numeric values are skipped. Returns whether it drew anything (if not, it writes nothing)."""
    series = read_series(log_paths, [key for _, keys, _ in panels for key in keys])
    panels = [(title, [(f"{run} {key}", points) for (run, key), points in series.items() if key in keys], log_axis)
              for title, keys, log_axis in panels]
    panels = [panel for panel in panels if panel[1]]
    if not panels:
        return False
    font = ImageFont.load_default()
    image = Image.new("RGB", (width, height * len(panels)), "white")
    draw = ImageDraw.Draw(image)
    for p, (title, lines, log_axis) in enumerate(panels):
        log = log_axis and all(y > 0 for _, points in lines for _, y in points)
        draw_panel(draw, font, panel_layout(p * height, width, height, [label for label, _ in lines], font),
                   title + (" (log axis)" if log else ""), lines, log)
    save(image, path)
    return True


def read_series(log_paths, wanted):
    """{(run, key): [(step, value)] sorted by step} for every key in `wanted` with a finite number in some line."""
    series = {}
    for log_path in log_paths:
        run = os.path.basename(os.path.dirname(os.path.abspath(log_path)))
        rows = [json.loads(line) for line in open(log_path) if line.strip()]
        for key in wanted:
            # a dict: a resumed run may log a step twice, and the later line is the one that counts
            points = {row["step"]: row[key] for row in rows if is_number(row.get("step")) and is_number(row.get(key))}
            if points:
                series[(run, key)] = sorted(points.items())
    return series


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def panel_layout(top, width, height, labels, font):
    """The plot and legend rectangles [x0, y0, x1, y1] of a panel whose top edge is at `top`: the plot leaves room
    left and below for tick values and axis titles; the legend is a column to its right, as wide as its longest
    label (at most a third of the width), so it can never cover a curve."""
    legend_width = min(width // 3, 36 + round(max(font.getlength(label) for label in labels)))
    plot = (64, top + 24, width - legend_width - 16, top + height - 40)
    legend = (plot[2] + 12, plot[1], width - 4, plot[1] + 8 + 14 * len(labels))
    return plot, legend


def draw_panel(draw, font, layout, title, lines, log):
    (x0, y0, x1, y1), legend = layout
    steps, values = [x for _, pts in lines for x, _ in pts], [y for _, pts in lines for _, y in pts]
    x_lo, x_hi = min(steps), max(steps) + (max(steps) == min(steps))
    if log:  # 5% of room above and below the data, in the axis's own units
        pad = (max(values) / min(values)) ** 0.05 if max(values) > min(values) else 2
        y_lo, y_hi = min(values) / pad, max(values) * pad
    else:
        pad = (max(values) - min(values)) * 0.05 or 0.5
        y_lo, y_hi = min(values) - pad, max(values) + pad
    to_y = math.log if log else float
    px = lambda x: x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0)  # noqa: E731
    py = lambda y: y1 - (to_y(y) - to_y(y_lo)) / (to_y(y_hi) - to_y(y_lo)) * (y1 - y0)  # noqa: E731
    for x in nice_ticks(x_lo, x_hi):
        draw.line([px(x), y0, px(x), y1], fill="#ececec")
        draw.line([px(x), y1, px(x), y1 + 4], fill="black")
        draw.text((px(x) - font.getlength(tick_label(x)) / 2, y1 + 6), tick_label(x), fill="black", font=font)
    for y in nice_ticks(y_lo, y_hi, log=log):
        draw.line([x0, py(y), x1, py(y)], fill="#ececec")
        draw.line([x0 - 4, py(y), x0, py(y)], fill="black")
        draw.text((x0 - 7 - font.getlength(tick_label(y)), py(y) - 6), tick_label(y), fill="black", font=font)
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text((x0, y0 - 18), title, fill="black", font=font)  # the y-axis title, above the axis
    draw.text(((x0 + x1) / 2 - font.getlength("step") / 2, y1 + 22), "step", fill="black", font=font)
    for k, (_, points) in enumerate(lines):  # every raw line first, so no faint line lies over a smoothed one
        if len(points) >= FEW_POINTS:
            draw.line([(px(x), py(y)) for x, y in points], fill=tint(COLORS[k % len(COLORS)]), width=1)
    for k, (_, points) in enumerate(lines):
        color, raw = COLORS[k % len(COLORS)], [y for _, y in points]
        shown = smooth(raw, max(3, len(raw) // 20)) if len(points) >= FEW_POINTS else raw  # 25 points for 500
        if len(points) > 1:
            draw.line([(px(x), py(y)) for (x, _), y in zip(points, shown)], fill=color, width=2)
        if len(points) < FEW_POINTS:
            for x, y in points:
                draw.ellipse([px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3], fill=color)
    draw.rectangle(legend, outline="#c0c0c0")
    for k, (label, _) in enumerate(lines):
        y = legend[1] + 10 + 14 * k
        draw.line([legend[0] + 6, y, legend[0] + 26, y], fill=COLORS[k % len(COLORS)], width=3)
        draw.text((legend[0] + 30, y - 6), label, fill="black", font=font)


def nice_ticks(lo, hi, log=False, most=6):
    """Round tick values in [lo, hi]. Linear: the multiples of the smallest step of 1, 2 or 5 x 10^k that gives at
    most `most` ticks (0..100 -> 0, 20, ..., 100). Log: the values 1, 2 and 5 x 10^k inside (0.29..6.84 -> 0.5,
    1, 2, 5), only the powers of ten if those are too many, linear ticks if fewer than two fall inside."""
    if log:
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        ticks = [v for e in decades for v in (decimal(m, e) for m in (1, 2, 5)) if lo <= v <= hi]
        if len(ticks) > most:
            ticks = [v for v in ticks if math.log10(v).is_integer()]
        return ticks if len(ticks) >= 2 else nice_ticks(lo, hi, most=most)
    e = math.floor(math.log10(hi - lo)) - 1 if hi > lo else 0
    return next(ticks for ticks in (multiples(lo, hi, m, k) for k in range(e, e + 3) for m in (1, 2, 5))
                if len(ticks) <= most)


def multiples(lo, hi, mantissa, exponent):
    """The multiples of mantissa x 10^exponent in [lo, hi], give or take float error (0.6 / 0.1 < 6)."""
    step = decimal(mantissa, exponent)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [decimal(i * mantissa, exponent) for i in range(first, last + 1)]


def decimal(mantissa, exponent):
    """mantissa x 10^exponent as the float nearest the decimal number (int / int is rounded once: 0.6, never
    0.6000000000000001 as 3 * 0.2 is), so tick labels carry no noise."""
    return mantissa * 10 ** exponent if exponent >= 0 else mantissa / 10 ** -exponent


def tick_label(value):
    return f"{value:g}"  # 0.5, 100, 2e-05: no trailing zeros or float noise


def smooth(values, window):
    """The centred moving average: each value is the mean of the raw values up to window // 2 points either side
    (fewer at the ends). Centred, unlike an exponential moving average, so the line does not lag the data."""
    values, half = np.asarray(values, dtype=float), window // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])
    i = np.arange(len(values))
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, len(values))
    return (sums[hi] - sums[lo]) / (hi - lo)


def tint(color, strength=0.3):
    """`color` ("#rrggbb") mixed with white: the faint version drawn under the smoothed line."""
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(255 - strength * (255 - c)):02x}" for c in rgb)


def save(image, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
