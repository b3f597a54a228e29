"""Tests of pictures.py: round tick values, a legend beside the plot, contact-sheet geometry, clipped boxes, curves
from log files, smoothing, and an import without torch."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFont

import pictures

TEXT_BAND = pictures.LINE_HEIGHT  # px of one text line under a tile's image


@pytest.mark.parametrize("lo, hi, log, ticks", [
    (0.29, 6.84, True, [0.5, 1, 2, 5]),  # the SFT loss: 1, 2, 5 x 10^k inside the range
    (0, 100, False, [0, 20, 40, 60, 80, 100]),  # step 10 would give 11 ticks, more than 6
    (0.3, 0.6, False, [0.3, 0.4, 0.5, 0.6]),  # step 0.05 would give 7
    (-0.02, 0.013, False, [-0.02, -0.01, 0, 0.01]),
    (0.31, 0.45, True, [0.35, 0.4, 0.45]),  # no 1, 2, 5 x 10^k inside: linear ticks on the log axis
    (1e-4, 1e4, True, [1e-4, 1e-3, 0.01, 0.1, 1, 10, 100, 1e3, 1e4]),  # too many: the powers of ten only
])
def test_nice_ticks_hand_worked(lo, hi, log, ticks):
    assert pictures.nice_ticks(lo, hi, log=log) == ticks


def test_tick_labels_carry_no_float_noise():
    ticks = pictures.nice_ticks(0.1, 0.6)  # 3 * 0.1 would be 0.30000000000000004
    assert [repr(t) for t in ticks] == [pictures.tick_label(t) for t in ticks] == ["0.1", "0.2", "0.3", "0.4", "0.5",
                                                                                   "0.6"]
    assert [pictures.tick_label(t) for t in (100.0, 0.5, 0.0, 2e-5)] == ["100", "0.5", "0", "2e-05"]


@pytest.mark.parametrize("labels", [["sft loss"], ["a_rather_long_run_name val_reward_grounding"] * 2 + ["x"] * 9])
def test_legend_is_beside_the_plot_inside_the_panel(labels):
    top, width, height = 300, 720, 300
    plot, legend = pictures.panel_layout(top, width, height, labels, ImageFont.load_default())
    assert plot[2] < legend[0] or legend[2] < plot[0] or plot[3] < legend[1] or legend[3] < plot[1]  # disjoint
    for x0, y0, x1, y1 in (plot, legend):
        assert 0 <= x0 < x1 <= width and top <= y0 < y1 <= top + height
    assert legend[3] - legend[1] >= 14 * len(labels)  # a row per series
    assert plot[2] - plot[0] >= width / 2  # the legend never squeezes the plot to nothing


def sheet_pixel(sheet, x, y, row=0, col=0, side=100, text_lines=2):
    """The RGB value at (x, y) of the tile at (row, col): the image's top-left is (0, 0)."""
    tile_width, tile_height = side + pictures.GAP, side + TEXT_BAND * text_lines + 4 + pictures.GAP
    return sheet.getpixel((pictures.GAP + col * tile_width + x, pictures.GAP + row * tile_height + y))


def test_contact_sheet_of_five_tiles_has_two_rows(tmp_path):
    images = [np.full((100, 100), 200, np.uint8), np.full((100, 100, 3), 200, np.uint8),
              Image.new("L", (100, 100), 200), Image.new("RGB", (50, 50), (200, 200, 200)),
              np.full((40, 80), 200, np.uint8)]  # wider than tall: 100 x 50 after scaling
    path = tmp_path / "new" / "folder" / "sheet.png"  # the folders do not exist yet
    pictures.contact_sheet([{"image": image} for image in images], str(path), cols=4, side=100, text_lines=2)
    sheet = Image.open(path).convert("RGB")
    assert sheet.size == (4 * (100 + pictures.GAP) + pictures.GAP,
                          2 * (100 + TEXT_BAND * 2 + 4 + pictures.GAP) + pictures.GAP)
    assert sheet_pixel(sheet, 99, 99, col=3) == (200, 200, 200)  # 50 px scaled up to the whole side
    assert sheet_pixel(sheet, 50, 45, row=1) == (200, 200, 200)
    assert sheet_pixel(sheet, 50, 55, row=1) == (0, 0, 0)  # below the 100 x 50 image: the tile's black
    assert sheet_pixel(sheet, 50, 45, row=1, col=1) == (0x60, 0x60, 0x60)  # no sixth tile: background


@pytest.mark.parametrize("height, box, inside, outside", [
    (100, [0.9, 0.9, 0.1, 0.1], [(10, 50), (89, 50), (50, 10), (50, 89)], [(50, 50), (5, 50), (95, 50)]),
    (100, [-1, 0, 2, 0.5], [(0, 25), (99, 25), (50, 0), (50, 49)], [(50, 25), (50, 60)]),
    (50, [0.5, -3, 2, 2], [(50, 25), (99, 25), (75, 0), (75, 49)], [(75, 25), (25, 25), (75, 55)]),  # 100 x 50
])
def test_boxes_are_drawn_clipped_with_corners_sorted(tmp_path, height, box, inside, outside):
    tile = {"image": np.zeros((height, 100), np.uint8), "boxes": [(box, "#ff0000", "")], "lines": []}
    pictures.contact_sheet([tile], str(tmp_path / "sheet.png"), cols=1, side=100, text_lines=2)
    sheet = Image.open(tmp_path / "sheet.png").convert("RGB")
    assert [sheet_pixel(sheet, x, y) for x, y in inside] == [(255, 0, 0)] * len(inside)  # on an edge
    assert [sheet_pixel(sheet, x, y) for x, y in outside] == [(0, 0, 0)] * len(outside)
    x0, y0, x1, y1 = pictures.clip_box(box)
    assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1


def test_text_is_wrapped_to_the_tile_and_capped(tmp_path):
    def white_rows(text, text_lines):
        tile = {"image": np.zeros((100, 100), np.uint8), "lines": [(text, "white")]}
        pictures.contact_sheet([tile], str(tmp_path / "sheet.png"), cols=1, side=100, text_lines=text_lines)
        pixels = np.asarray(Image.open(tmp_path / "sheet.png").convert("L"))[pictures.GAP + 100:-pictures.GAP]
        return [k for k in range(text_lines) if pixels[2 + TEXT_BAND * k: 2 + TEXT_BAND * (k + 1)].max() > 128]
    assert white_rows("short", 3) == [0]
    assert white_rows("word " * 40, 3) == [0, 1, 2]  # 200 characters: wrapped onto every line there is


def write_log(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


def test_draw_curves_three_panels_from_two_runs(tmp_path):
    sft = write_log(tmp_path / "sft" / "log.jsonl",
                    [{"step": 0, "val_loss": 6.8}] + [{"step": s, "loss": 6.8 * math.exp(-s / 20) + 0.3}
                                                      for s in range(1, 100)]
                    + [{"step": 100, "loss": float("nan")}, {"step": 101, "loss": "n/a"}, {"step": 102, "loss": True}])
    grpo = write_log(tmp_path / "grpo" / "log.jsonl",
                     [{"step": s, "reward_report": 0.3 + s / 200, "reward_grounding": 0.5, "loss": -0.01,
                       **({"val_reward_report": 0.4} if s % 25 == 0 else {})} for s in range(60)])
    path = tmp_path / "out" / "curves.png"
    assert pictures.draw_curves([sft, grpo], str(path), width=600, height=250) is True
    assert Image.open(path).size == (600, 3 * 250)
    series = pictures.read_series([sft, grpo], [key for _, keys, _ in pictures.PANELS for key in keys])
    assert sorted(series) == [("grpo", "loss"), ("grpo", "reward_grounding"), ("grpo", "reward_report"),
                              ("grpo", "val_reward_report"), ("sft", "loss"), ("sft", "val_loss")]
    assert [step for step, _ in series[("sft", "loss")]] == list(range(1, 100))  # NaN, text and a bool skipped
    assert [step for step, _ in series[("grpo", "val_reward_report")]] == [0, 25, 50]


def test_draw_curves_draws_the_panels_it_is_given(tmp_path):
    """A lesson's own panels (keys outside PANELS) are drawn, one panel each, and PANELS' keys are then not."""
    log = write_log(tmp_path / "no_clip_s0" / "log.jsonl",
                    [{"step": s, "ratio_max": 1 + s, "reward_report": 0.3} for s in range(1, 40)])
    path = tmp_path / "lesson.png"
    assert pictures.draw_curves([log], str(path), height=200, panels=[("largest ratio", ("ratio_max",), True)])
    assert Image.open(path).size == (720, 200)
    assert not pictures.draw_curves([log], str(tmp_path / "none.png"), panels=[("kl", ("kl",), True)])


def test_draw_curves_without_any_panel_key_writes_nothing(tmp_path):
    log = write_log(tmp_path / "run" / "log.jsonl", [{"step": 1, "lr": 1e-3, "grad_norm": 2.0},
                                                     {"step": 2, "loss": float("inf")}])
    assert pictures.draw_curves([log], str(tmp_path / "curves.png")) is False
    assert not (tmp_path / "curves.png").exists()


def test_smooth_is_smoother_than_raw_and_does_not_lag():
    rng = np.random.default_rng(0)
    raw = np.linspace(0, 1, 400) + rng.normal(0, 0.2, 400)
    smoothed = pictures.smooth(raw, 21)
    assert np.abs(np.diff(smoothed)).mean() < np.abs(np.diff(raw)).mean() / 5
    ramp = np.arange(50.0)
    assert np.allclose(pictures.smooth(ramp, 9)[4:-4], ramp[4:-4])  # centred: a straight line stays put
    assert pictures.smooth([1.0, 2.0, 6.0], 3).tolist() == [1.5, 3.0, 4.0]  # fewer points at the ends


def test_imports_without_torch():
    code = "import pictures, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
