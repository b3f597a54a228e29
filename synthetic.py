"""
synthetic.py: a procedural world of frontal chest X-rays with known ground truth, deterministic from a seed.

The embedded default data: the whole pipeline runs on a laptop CPU, and a tiny Qwen3-VL (128 px -> 16 visual
tokens) learns this world in minutes without saturating it. Findings are medium-sized (lesions under ~12 px radius
are not learned in minutes: docs/engineering.md, "Can a tiny Qwen3-VL learn a synthetic CXR world?") and carry what
a greedy answer gets only partly right: box precision, laterality, severity, several co-occurring findings. ~2 ms
per 128-px study on one CPU core.

    python data.py synth --n 500 --out out/synth      # PNGs + records.jsonl + contact_sheet.png
    python synthetic.py --n 500 --out out/synth       # the same

Convention: the patient's RIGHT is on the image LEFT. Boxes are normalized [x_min, y_min, x_max, y_max] rounded to
2 decimals: the tight support of what was drawn (anatomy: of the organ's mask).

| finding          | look (in the lung fields)                                  | attributes              | prev. |
|------------------|------------------------------------------------------------|-------------------------|-------|
| (normal)         | no finding at all                                          |                         | 31 %  |
| cardiomegaly     | heart widened from CTR 0.40-0.49 to 0.55-0.68; box = heart | mild/moderate/severe    | 30 %  |
| pleural effusion | fluid below a meniscus climbing laterally, blunts cp angle | side; small/mod./large  | 28 %  |
| pneumothorax     | lucent apical-lateral rim without markings, pleural line   | side; small/mod./large  | 10 %  |
| consolidation    | dense lobar cluster with air bronchograms                  | side; lobe              | 16 %  |
| lung opacity     | fainter, patchy cluster                                    | side; zone              | 13 %  |
| atelectasis      | plate-like band in the lower zone (30 % bibasilar)         | side; linear/plate-like | 15 %  |
| edema            | perihilar "bat wing" haze; one box over both central lungs | mild/moderate/severe    | 9 %   |
| mass / nodule    | round (mass: lobulated) opacity 2.5-7.5 cm (nodule < 3 cm) | side; zone; size in cm  | 9 %   |
| support devices  | ET tube, internal jugular line, pacemaker with leads       | tip, side, leads        | 23 %  |
Abnormal studies (70 %) draw each finding independently and redraw until one is a pathology (38 % of studies
hold two or more); edema brings cardiomegaly and bilateral effusions (10 % of studies) with it, cardiomegaly
brings pacemakers. Anatomy boxes: right/left lung, heart, mediastinum, trachea, spine, right/left costophrenic
angle. Patients vary in size, position, inspiration, heart size, ribs, exposure (window, gamma), grain, mottle.

Report grammar: devices first, then the heart first or last, findings (several templates each, with severity
and laterality words) before negations. Absent key findings are always negated ("The heart size is normal.",
"No pleural effusion or pneumothorax.", "No focal consolidation."), edema, nodules, pneumonia, fractures
sometimes. Labels (CheXpert names) are what the report says: 1 for each finding, 0 for each negated label,
"No Finding" 1 for a normal study, the rest omitted. Positive sentences only use their own finding's words, so
the positive labels are a function of the image.
"""

import argparse
import math
import os
import random
import sys
from collections import Counter
from functools import lru_cache

import numpy as np
from PIL import Image

from pictures import contact_sheet
from records import (CHEXPERT_LABELS, PROMPTS, TASKS, classification_answer, findings_answer, format_boxes,
                     location_answer, make_record, phrase_answer, save_records)


FOV_CM = 36.0  # the image is 36 cm wide: turns normalized sizes into the cm of the reports
SPLIT_OFFSET = {"train": 0, "val": 10_000_000, "test": 20_000_000}  # disjoint study-seed ranges ...
SPLIT_SIZE = 10_000_000  # ... of this length
DEFAULT_MIX = {"report": 0.3, "classification": 0.15, "anatomical_grounding": 0.15,
               "abnormality_grounding": 0.2, "phrase_grounding": 0.1, "conversation": 0.1}
LABEL_OF = {"cardiomegaly": "Cardiomegaly", "pleural effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax",
            "consolidation": "Consolidation", "lung opacity": "Lung Opacity", "atelectasis": "Atelectasis",
            "edema": "Edema", "nodule": "Lung Lesion", "mass": "Lung Lesion", "endotracheal tube": "Support Devices",
            "central venous catheter": "Support Devices", "pacemaker": "Support Devices"}
DEVICES = ("endotracheal tube", "central venous catheter", "pacemaker")
SIDES = ("right", "left")
SEVERITY = ("mild", "moderate", "severe")
SIZE = ("small", "moderate", "large")

# ---------------------------------------------------------------------------------------------------------------
# Report language: positive templates per finding, filled from its attributes ("+bilateral": both sides at once)

TEMPLATES = {
    "cardiomegaly": ["{severity} cardiomegaly.", "The heart is {severity}ly enlarged.",
                     "There is {severity} cardiomegaly.", "{severity} enlargement of the cardiac silhouette."],
    "pleural effusion": ["{size} {side} pleural effusion.", "There is a {size} {side} pleural effusion.",
                         "{size} {side} pleural effusion with blunting of the {side} costophrenic angle.",
                         "A {size} {side} pleural effusion is present."],
    "pleural effusion+bilateral": ["{size} bilateral pleural effusions.",
                                   "{size} pleural effusions are present bilaterally.",
                                   "There are {size} bilateral pleural effusions."],
    "pneumothorax": ["{size} {side} pneumothorax.", "There is a {size} {side} pneumothorax.",
                     "A {size} {side} pneumothorax is present with a visible pleural line.",
                     "{size} {side}-sided pneumothorax."],
    "consolidation": ["{side} {lobe} lobe consolidation.", "Consolidation in the {side} {lobe} lobe.",
                      "There is consolidation in the {side} {lobe} lobe.", "Dense {side} {lobe} lobe consolidation."],
    "lung opacity": ["Patchy opacity in the {side} {zone} lung.", "There is a patchy {side} {zone} lung opacity.",
                     "Ill-defined opacity in the {side} {zone} lung."],
    "atelectasis": ["{kind} atelectasis at the {side} lung base.", "{kind} atelectasis in the {side} lower lung.",
                    "There is {kind} atelectasis at the {side} base."],
    "atelectasis+bilateral": ["Bibasilar {kind} atelectasis.", "{kind} atelectasis at both lung bases.",
                              "There is bibasilar {kind} atelectasis."],
    "edema": ["{severity} pulmonary edema.", "There is {severity} pulmonary edema.",
              "{severity} pulmonary edema with perihilar haziness.",
              "Perihilar haziness consistent with {severity} pulmonary edema."],
    "nodule": ["A {cm} cm {kind} in the {side} {zone} lung.", "There is a {cm} cm {side} {zone} lung {kind}.",
               "{cm} cm rounded {kind} in the {side} {zone} lung zone."],
    "endotracheal tube": ["Endotracheal tube terminates {tip_cm} cm above the carina.",
                          "The endotracheal tube tip is {tip_cm} cm above the carina.",
                          "An endotracheal tube is in place with its tip {tip_cm} cm above the carina."],
    "central venous catheter": ["{side} internal jugular central venous catheter terminates in the {tip}.",
                                "A {side} internal jugular central line ends in the {tip}.",
                                "{side} internal jugular catheter with its tip in the {tip}."],
    "pacemaker": ["Left-sided pacemaker with {leads}.", "A left chest wall pacemaker is present with {leads}.",
                  "{chambers} pacemaker with {leads}."],
}
TEMPLATES["mass"] = TEMPLATES["nodule"]

# Negations: (sentence, labels it negates, labels that must be absent too for it to be true)
C, PE, PTX = "Consolidation", "Pleural Effusion", "Pneumothorax"
NEGATIONS = [
    ("No focal consolidation, pleural effusion, or pneumothorax.", {C, PE, PTX}, set()),
    ("There is no focal consolidation, pleural effusion, or pneumothorax.", {C, PE, PTX}, set()),
    ("No pleural effusion or pneumothorax.", {PE, PTX}, set()),
    ("There is no pleural effusion or pneumothorax.", {PE, PTX}, set()),
    ("No pneumothorax or pleural effusion is seen.", {PE, PTX}, set()),
    ("No focal consolidation.", {C}, set()),
    ("There is no focal consolidation.", {C}, set()),
    ("The lungs are clear without focal consolidation.", {C}, {"Lung Opacity", "Edema", "Atelectasis", "Lung Lesion"}),
    ("No focal consolidation to suggest pneumonia.", {C, "Pneumonia"}, {"Lung Opacity"}),
    ("No focal consolidation or pulmonary edema.", {C, "Edema"}, set()),
    ("No evidence of pneumonia.", {"Pneumonia"}, {C, "Lung Opacity"}),
    ("No pleural effusion.", {PE}, set()),
    ("There is no pleural effusion.", {PE}, set()),
    ("No pneumothorax.", {PTX}, set()),
    ("There is no pneumothorax.", {PTX}, set()),
    ("No pulmonary edema.", {"Edema"}, set()),
    ("No suspicious pulmonary nodules or masses.", {"Lung Lesion"}, set()),
    ("No displaced rib fractures.", {"Fracture"}, set()),
    ("No acute displaced fracture is seen.", {"Fracture"}, set()),
]
HEART_NEGATIONS = [("The heart size is normal.", {"Cardiomegaly"}), ("Heart size is normal.", {"Cardiomegaly"}),
                   ("The heart is normal in size.", {"Cardiomegaly"}),
                   ("Heart size and mediastinal contours are normal.", {"Cardiomegaly", "Enlarged Cardiomediastinum"})]

# ---------------------------------------------------------------------------------------------------------------
# Sampling a study: every random number is drawn before anything is rendered, so that a study can be rendered
# again without one of its findings (the tests do) from exactly the same numbers.


def _sample_patient(rng):
    u = rng.uniform
    apex, dome_r = u(0.09, 0.15), u(0.62, 0.69)
    return dict(cx=0.5 + rng.normal(0, 0.015), tw=u(0.33, 0.39), apex=apex, dome_r=dome_r,
                dome_l=dome_r + u(0.0, 0.04),  # the right hemidiaphragm usually sits higher
                cp_drop=u(0.06, 0.09), med_hw=u(0.05, 0.065), ctr=u(0.40, 0.49), heart_hh=u(0.15, 0.19),
                carina=apex + u(0.15, 0.19), trachea_dx=rng.normal(0, 0.006), body_margin=u(0.05, 0.1),
                lung_dark=u(0.30, 0.40), bone=u(0.05, 0.09), rib_space=u(0.07, 0.085), rib_phase=u(0, 1),
                vessel_phase=u(0, 2 * math.pi), gastric=rng.random() < 0.6, lo=u(-0.03, 0.03), hi=u(0.62, 0.75),
                gamma=u(0.8, 1.25), grain=u(0.01, 0.035), mottle=u(0.01, 0.04), noise_seed=int(rng.integers(2**31)))


def _lung_geometry(p, side):
    """One lung in normalized image coordinates (the patient's right lung is on the image left)."""
    sign = -1 if side == "right" else 1
    dome = p["dome_r"] if side == "right" else p["dome_l"]
    return dict(sign=sign, lateral=p["cx"] + sign * p["tw"], medial=p["cx"] + sign * p["med_hw"], apex=p["apex"],
                dome=dome, cp=dome + p["cp_drop"])  # cp: the costophrenic angle, the lowest lateral corner


ZONE_FY = {"upper": (0.15, 0.33), "middle": (0.5, 0.62), "mid": (0.45, 0.58), "lower": (0.66, 0.78)}


def _lung_point(rng, g, fy, fx=(0.3, 0.75)):
    """A point in lung g: fy = fraction of the height from the apex, fx = fraction of the width from medial."""
    return (g["medial"] + rng.uniform(*fx) * (g["lateral"] - g["medial"]),
            g["apex"] + rng.uniform(*fy) * (g["cp"] - g["apex"]))


def _blobs(rng, g, fy, n, sigma, spread, fx=(0.3, 0.75)):
    """A cluster of Gaussian blobs (consolidation, opacity) around a point of one lung zone."""
    x, y = _lung_point(rng, g, fy, fx)
    return dict(blobs=[(x + rng.normal(0, spread), y + rng.normal(0, spread), rng.uniform(*sigma)) for _ in range(n)])


def _sample_findings(rng, p):
    """30 % normal; otherwise findings by prevalence, redrawn until at least one is a pathology."""
    if rng.random() < 0.30:
        return []
    u, pick = rng.uniform, lambda options, probs=None: str(rng.choice(options, p=probs))
    geo = {s: _lung_geometry(p, s) for s in SIDES}
    while True:
        found = []
        add = lambda name, draw, **attrs: found.append(dict(name=name, attrs=attrs, draw=draw))
        edema = rng.random() < 0.12
        if edema:
            add("edema", dict(sx=u(0.08, 0.11), sy=u(0.1, 0.13)), severity=pick(SEVERITY, [0.4, 0.4, 0.2]))
        if rng.random() < (0.65 if edema else 0.30):
            ctr = u(0.55, 0.68)
            add("cardiomegaly", dict(ctr=ctr), severity=SEVERITY[(ctr > 0.59) + (ctr > 0.64)])
        effusion_sides = []
        if rng.random() < (0.65 if edema else 0.30):
            effusion_sides = list(SIDES) if rng.random() < (0.7 if edema else 0.25) else [pick(SIDES)]
        for side in effusion_sides:
            size = pick(SIZE, [0.4, 0.4, 0.2])
            frac = u(*{"small": (0.17, 0.23), "moderate": (0.28, 0.38), "large": (0.45, 0.58)}[size])
            add("pleural effusion", dict(frac=frac, meniscus=u(0.04, 0.07)), side=side, size=size)
        if rng.random() < 0.18:
            side = pick(SIDES)
            lobe = pick(("upper", "middle", "lower") if side == "right" else ("upper", "lower"))
            fx = (0.05, 0.3) if lobe == "middle" else (0.3, 0.75)  # the middle lobe borders the heart
            add("consolidation", _blobs(rng, geo[side], ZONE_FY[lobe], 4, (0.025, 0.04), 0.03, fx),
                side=side, lobe=lobe)
        if rng.random() < 0.15:
            side, zone = pick(SIDES), pick(("upper", "mid", "lower"))
            add("lung opacity", _blobs(rng, geo[side], ZONE_FY[zone], 4, (0.03, 0.05), 0.035), side=side, zone=zone)
        if rng.random() < 0.18:
            kind = pick(("linear", "plate-like", "subsegmental"))
            for side in (SIDES if rng.random() < 0.3 else [pick(SIDES)]):
                x, y = _lung_point(rng, geo[side], (0.7, 0.8))
                add("atelectasis", dict(x=x, y=y, length=u(0.12, 0.18), angle=u(-0.3, 0.3), width=u(0.011, 0.016)),
                    side=side, kind=kind)
        if rng.random() < 0.12 and len(effusion_sides) < 2:
            side = pick([s for s in SIDES if s not in effusion_sides])  # no hydropneumothorax in this world
            size = pick(SIZE, [0.4, 0.4, 0.2])
            apex_gap, lateral_gap, reach = {"small": (0.05, 0.015, 0.35), "moderate": (0.08, 0.035, 0.6),
                                            "large": (0.13, 0.06, 0.9)}[size]
            add("pneumothorax", dict(apex_gap=apex_gap * u(0.9, 1.3), lateral_gap=lateral_gap * u(0.8, 1.3),
                                     reach=reach * u(0.85, 1.1)), side=side, size=size)
        if rng.random() < 0.10:
            side, zone, cm = pick(SIDES), pick(("upper", "mid", "lower")), round(u(2.5, 7.5), 1)
            x, y = _lung_point(rng, geo[side], ZONE_FY[zone], (0.35, 0.65))
            kind = "nodule" if cm < 3 else "mass"
            add(kind, dict(x=x, y=y, r=cm / 2 / FOV_CM, lobe_dx=u(-1, 1), lobe_dy=u(-1, 1)),
                side=side, zone=zone, cm=cm, kind=kind)
        if rng.random() < 0.12:
            add("endotracheal tube", {}, tip_cm=int(rng.integers(2, 8)))
        if rng.random() < 0.15:
            add("central venous catheter", {}, side=pick(SIDES, [0.75, 0.25]),
                tip=pick(("mid SVC", "lower SVC", "cavoatrial junction")))
        if rng.random() < (0.15 if any(f["name"] == "cardiomegaly" for f in found) else 0.05):
            add("pacemaker", dict(gx=u(0.2, 0.26), gy=u(0.02, 0.07)), dual=bool(rng.random() < 0.7))
        if any(f["name"] not in DEVICES for f in found):
            return found


# ---------------------------------------------------------------------------------------------------------------
# Rendering: density maps on a normalized grid (X a row, Y a column: broadcasting builds the image), edges
# anti-aliased over ~1 px, then an exposure curve, grain and mottle.


@lru_cache(maxsize=8)
def _grid(size):
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :], c[:, None]


def _soft(distance_px):
    """Inside-ness from a signed distance in pixels (> 0 inside)."""
    return np.clip(distance_px + 0.5, 0, 1)


def _outline(X, Y, x0, x1, top, bottom, size):
    """Signed pixel distance to a lung-like superellipse: round (p=2) upper half, boxy (p=4) lower half."""
    a, b = abs(x1 - x0) / 2, (bottom - top) / 2
    u2, v = ((X - (x0 + x1) / 2) / a) ** 2, (Y - (top + bottom) / 2) / b
    v2 = v * v
    f = np.where(v < 0, np.sqrt(u2 + v2), np.sqrt(np.sqrt(u2 * u2 + v2 * v2)))
    return (1 - f) * min(a, b) * size


def _lung_outline(g, X, Y, size, apex_gap=0.0, lateral_gap=0.0):
    """Signed distance to a lung's outline; shrunk from apex and side, the lung of a pneumothorax."""
    return _outline(X, Y, g["lateral"] - g["sign"] * lateral_gap, g["medial"], g["apex"] + apex_gap, g["cp"] + 0.03,
                    size)


def _dome(g, X, Y, size):
    """Signed distance above the hemidiaphragm: a parabola peaking medially, down to the cp angle laterally."""
    top_x = g["medial"] + 0.4 * (g["lateral"] - g["medial"])
    return (g["dome"] + (g["cp"] - g["dome"]) * ((X - top_x) / (g["lateral"] - top_x)) ** 2 - Y) * size


def _heart(p, ctr, X, Y, size):
    """Heart ellipse, 1/3 right and 2/3 left of the midline, resting on the left hemidiaphragm."""
    width = 2 * p["tw"] * ctr
    a, b = width / 2, p["heart_hh"]
    f = np.sqrt(((X - p["cx"] - width / 6) / a) ** 2 + ((Y - p["dome_l"] + 0.5 * b) / b) ** 2)
    return _soft((1 - f) * min(a, b) * size) * _soft((p["dome_l"] + 0.01 - Y) * size)


def _stroke(X, Y, points, width):
    """A polyline of Gaussian profile, exactly 0 beyond ~1.7 widths so that its box is tight."""
    distance = None
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((X - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
        d = np.sqrt((X - x0 - t * dx) ** 2 + (Y - y0 - t * dy) ** 2)
        distance = d if distance is None else np.minimum(distance, d)
    g = np.exp(-(distance / width) ** 2)
    return np.where(g > 0.05, g, 0)


# Findings that fill lung air with fluid or tissue return the filled fraction (0-1); fills combine as
# 1 - prod(1 - fill), so overlaps never get denser than soft tissue. The others return density to add.
FILLS = {"pleural effusion", "consolidation", "lung opacity", "atelectasis", "edema", "nodule", "mass"}


def _render(plan, size, omit=()):
    """Image (uint8), each finding's visible density (its box is the support) and the anatomy, from a plan."""
    p, S = plan["patient"], size
    X, Y = _grid(size)
    cx, apex, carina = p["cx"], p["apex"], p["carina"]
    noise = np.random.default_rng(p["noise_seed"])
    low = noise.random((S // 8 + 2, S // 8 + 2), dtype=np.float32)
    mottle = np.asarray(Image.fromarray(low).resize((S, S), Image.BILINEAR))  # smooth texture in 0-1
    xr = np.abs(X - cx)  # mirrored coordinate: what is symmetric is drawn once for both sides
    geo = {s: _lung_geometry(p, s) for s in SIDES}
    depth = {s: _lung_outline(g, X, Y, S) for s, g in geo.items()}  # pixels inside the outline
    lungs = {s: _soft(depth[s]) * _soft(_dome(g, X, Y, S)) for s, g in geo.items()}
    knob = _soft((0.03 - np.sqrt((X - cx - p["med_hw"] - 0.012) ** 2 + (Y - carina + 0.035) ** 2)) * S)
    lungs["left"] = lungs["left"] * (1 - knob)  # the aortic knob bulges into the left upper lung
    lungs_both = lungs["right"] + lungs["left"]
    dx, dy = xr - 0.11, Y - carina - 0.07  # from the hilum of each side
    r = np.sqrt(dx * dx + dy * dy)  # vessels radiate from the hila and taper; the mottle makes them wiggle
    vessels = (0.5 + 0.5 * np.cos(13 * np.arctan2(dy, dx) + 2.5 * np.sin(25 * r + p["vessel_phase"]) + 4 * mottle)) ** 3
    vessels *= np.exp(-r / 0.2)
    # the density air takes away: less at the thin lung edges and under the shoulders, none along vessels
    thickness = np.clip(np.maximum(depth["right"], depth["left"]) / (0.07 * S), 0, 1)
    shoulders = np.clip((apex + 0.12 - Y) / 0.12, 0, 1)
    airiness = p["lung_dark"] * (0.6 + 0.4 * thickness) * (1 - 0.35 * shoulders) - 0.06 * vessels
    heart = _heart(p, p["ctr"], X, Y, S)
    big_ctr = [f["draw"]["ctr"] for f in plan["findings"] if f["name"] == "cardiomegaly"]
    final_heart = _heart(p, big_ctr[0], X, Y, S) if big_ctr else heart
    air = lungs_both * (1 - 0.85 * final_heart)  # the air that findings can fill
    ctx = dict(p=p, X=X, Y=Y, S=S, geo=geo, lungs=lungs, lungs_both=lungs_both, airiness=airiness,
               heart=heart, final_heart=final_heart, vessels=vessels, mottle=mottle)

    bw = p["tw"] + p["body_margin"]
    body = _soft(_outline(X, Y, cx - bw, cx + bw, -0.15, 1.3, S))  # rounded shoulders at the top corners
    D = body * (0.40 + 0.12 * np.clip(1 - ((X - cx) / bw) ** 2, 0, 1))  # thicker in the middle
    D = D - lungs_both * (1 - 0.85 * heart) * airiness + 0.06 * np.exp(-(dx * dx / 0.0012 + dy * dy / 0.0025))
    rib_y = Y + 0.6 * xr - 2.2 * xr * xr  # posterior ribs: up from the spine, then curving down laterally
    ribs = np.clip((np.cos(2 * np.pi * (rib_y / p["rib_space"] + p["rib_phase"])) - 0.45) * 3, 0, 1)
    chest = _soft((p["tw"] + 0.01 - xr) * S) * _soft((xr - 0.035) * S) * _soft((Y - apex + 0.05) * S)
    D = D + p["bone"] * ribs * chest * (0.3 + 0.7 * lungs_both * (1 - heart)) * _soft((p["dome_l"] + 0.03 - Y) * S)
    D = D + 1.2 * p["bone"] * _stroke(xr, Y, [(0.035, apex + 0.07), (0.28, apex - 0.02)], 0.013)  # clavicles
    D = D + 0.6 * p["bone"] * _soft((0.035 - xr) * S) * (0.7 + 0.3 * np.cos(2 * np.pi * Y / 0.055))  # spine
    tx = cx + p["trachea_dx"]
    D = D - 0.12 * _soft((0.013 - np.abs(X - tx)) * S) * _soft((carina - Y) * S)  # trachea, then the bronchi
    D = D - 0.08 * _stroke(np.abs(X - tx), Y, [(0.0, carina), (0.06, carina + 0.05)], 0.01)
    if p["gastric"]:  # gastric bubble under the left hemidiaphragm
        f = np.sqrt(((X - cx - 0.18) / 0.05) ** 2 + ((Y - p["dome_l"] - 0.06) / 0.03) ** 2)
        D = D - 0.15 * _soft((1 - f) * 0.03 * S)

    effects = [RENDER[f["name"]](f, ctx) for f in plan["findings"]]
    clear = 1.0
    for i, (f, effect) in enumerate(zip(plan["findings"], effects)):
        if i not in omit:
            if f["name"] in FILLS:
                clear = clear * (1 - effect)
            else:
                D = D + effect
    D = D + (1 - clear) * air * airiness
    image = np.clip((D - p["lo"]) / (p["hi"] - p["lo"]), 0, 1) ** p["gamma"]
    image = image + p["grain"] * noise.standard_normal((S, S), dtype=np.float32) + p["mottle"] * (mottle - 0.5)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    visible = [e * air * airiness if f["name"] in FILLS else e for f, e in zip(plan["findings"], effects)]
    return image, visible, ctx


def _cardiomegaly(f, ctx):
    """Air replaced by heart between the normal and the enlarged outline."""
    return 0.85 * np.clip(ctx["final_heart"] - ctx["heart"], 0, 1) * ctx["lungs_both"] * ctx["airiness"]


def _effusion(f, ctx):
    """Fluid below a meniscus that climbs laterally, denser with depth; it hides the dome and the cp angle."""
    g, X, Y, S, d = ctx["geo"][f["attrs"]["side"]], ctx["X"], ctx["Y"], ctx["S"], f["draw"]
    lateralness = np.clip((X - g["medial"]) / (g["lateral"] - g["medial"]), 0, 1)
    surface = g["cp"] - d["frac"] * (g["cp"] - g["apex"]) + d["meniscus"] * (1 - lateralness ** 2)
    fluid = _soft((Y - surface) * S / 1.5) * (0.8 + 0.2 * np.clip((Y - surface) / 0.05, 0, 1))
    return fluid * ctx["lungs"][f["attrs"]["side"]]


def _pneumothorax(f, ctx):
    """Lung retracted from apex and side down to `reach`: a lucent rim without markings, a thin pleural line."""
    side, Y, S, d = f["attrs"]["side"], ctx["Y"], ctx["S"], f["draw"]
    g = ctx["geo"][side]
    inner = _lung_outline(g, ctx["X"], Y, S, d["apex_gap"], d["lateral_gap"])
    apart = np.clip(_lung_outline(g, ctx["X"], Y, S) - inner - 0.5, 0, 1)  # 1 where the two outlines part
    extent = apart * _soft((g["apex"] + d["reach"] * (g["cp"] - g["apex"]) - Y) * S / 4) * ctx["lungs"][side]
    rim = extent * (1 - _soft(inner)) * (1 - 0.85 * ctx["heart"])
    line = np.exp(-(inner / 0.8) ** 2)
    return -rim * (0.06 * ctx["vessels"] + 0.1) + 0.1 * np.where(line > 0.05, line, 0) * extent


def _cluster(f, ctx):
    """Consolidation: dense, with air bronchograms (lucent branches). Lung opacity: fainter and patchy."""
    field = sum(np.exp(-((ctx["X"] - x) ** 2 + (ctx["Y"] - y) ** 2) / (2 * s * s)) for x, y, s in f["draw"]["blobs"])
    lung, mottle = ctx["lungs"][f["attrs"]["side"]], ctx["mottle"]
    if f["name"] == "consolidation":
        return np.clip((field * (0.8 + 0.4 * mottle) - 0.35) / 0.35, 0, 1) * lung * (0.9 - 0.5 * ctx["vessels"])
    return np.clip((field * (0.6 + 0.8 * mottle) - 0.3) / 0.5, 0, 1) * lung * 0.55


def _atelectasis(f, ctx):
    d = f["draw"]
    ux, uy = math.cos(d["angle"]) * d["length"] / 2, math.sin(d["angle"]) * d["length"] / 2
    band = _stroke(ctx["X"], ctx["Y"], [(d["x"] - ux, d["y"] - uy), (d["x"] + ux, d["y"] + uy)], d["width"])
    return 0.8 * band * ctx["lungs"][f["attrs"]["side"]]


def _edema(f, ctx):
    """Perihilar haze on both sides, mottled."""
    p, d = ctx["p"], f["draw"]
    dx, dy = np.abs(ctx["X"] - p["cx"]) - 0.11, ctx["Y"] - p["carina"] - 0.08
    haze = np.clip((np.exp(-dx * dx / (2 * d["sx"] ** 2) - dy * dy / (2 * d["sy"] ** 2)) - 0.25) / 0.75, 0, 1)
    return haze * (0.7 + 0.6 * ctx["mottle"]) * {"mild": 0.35, "moderate": 0.5, "severe": 0.65}[f["attrs"]["severity"]]


def _lesion(f, ctx):
    d, X, Y, S = f["draw"], ctx["X"], ctx["Y"], ctx["S"]
    disc = _soft((d["r"] - np.sqrt((X - d["x"]) ** 2 + (Y - d["y"]) ** 2)) * S)
    if f["name"] == "mass":  # lobulated: a second, smaller disc overlapping the first
        x2, y2 = d["x"] + 0.5 * d["r"] * d["lobe_dx"], d["y"] + 0.5 * d["r"] * d["lobe_dy"]
        disc = np.maximum(disc, _soft((0.7 * d["r"] - np.sqrt((X - x2) ** 2 + (Y - y2) ** 2)) * S))
    return 0.9 * disc * ctx["lungs"][f["attrs"]["side"]]


def _device(f, ctx):
    p, X, Y, S, a = ctx["p"], ctx["X"], ctx["Y"], ctx["S"], f["attrs"]
    cx, carina, svc_x = p["cx"], p["carina"], p["cx"] - 0.05
    if f["name"] == "endotracheal tube":  # two radio-opaque walls down the trachea
        tip = carina - a["tip_cm"] / FOV_CM
        walls = np.exp(-((np.abs(X - cx - p["trachea_dx"]) - 0.012) / 0.005) ** 2) * _soft((tip - Y) * S)
        return 0.22 * np.where(walls > 0.05, walls, 0)
    if f["name"] == "central venous catheter":  # down the internal jugular vein into the superior vena cava
        tip = carina + {"mid SVC": 0.0, "lower SVC": 0.04, "cavoatrial junction": 0.09}[a["tip"]]
        s = -1 if a["side"] == "right" else 1
        path = [(cx + s * 0.1, 0.0), (cx + s * 0.075, p["apex"] + 0.04), (svc_x + 0.01, carina - 0.06), (svc_x, tip)]
        return 0.25 * _stroke(X, Y, path, 0.006)
    gx, gy = cx + f["draw"]["gx"], p["apex"] + f["draw"]["gy"]  # pacemaker: generator in the left upper chest
    generator = _soft((0.045 - np.abs(X - gx)) * S) * _soft((0.03 - np.abs(Y - gy)) * S)
    atrium = (svc_x + 0.01, p["dome_r"] - 0.1)
    leads = _stroke(X, Y, [(gx - 0.03, gy), (cx + 0.03, p["apex"] + 0.06), (svc_x, carina), atrium], 0.007)
    if a["dual"]:  # a second lead on to the right ventricle
        ventricle = [atrium, (cx + 0.03, p["dome_l"] - 0.05), (cx + 0.1, p["dome_l"] - 0.03)]
        leads = np.maximum(leads, _stroke(X, Y, ventricle, 0.007))
    return np.maximum(0.45 * generator, 0.28 * leads)


RENDER = {"cardiomegaly": _cardiomegaly, "pleural effusion": _effusion, "pneumothorax": _pneumothorax,
          "consolidation": _cluster, "lung opacity": _cluster, "atelectasis": _atelectasis, "edema": _edema,
          "nodule": _lesion, "mass": _lesion, **{name: _device for name in DEVICES}}


def _round_box(box):
    """Clipped to 0-1 and rounded to 2 decimals like the answer texts, still with x_min < x_max, y_min < y_max."""
    def axis(lo, hi):
        lo, hi = (round(min(max(float(v), 0.0), 1.0), 2) for v in (lo, hi))
        return (lo, hi) if hi > lo else (min(lo, 0.99), round(min(lo, 0.99) + 0.01, 2))  # keep one step
    (x0, x1), (y0, y1) = axis(box[0], box[2]), axis(box[1], box[3])
    return [x0, y0, x1, y1]


def _support_box(array, threshold):
    """Box of the pixels where |array| > threshold, None if there are none."""
    mask = np.abs(array) > threshold
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    S = mask.shape[0]
    return _round_box([cols[0] / S, rows[0] / S, (cols[-1] + 1) / S, (rows[-1] + 1) / S]) if rows.size else None


def _anatomy(ctx):
    p = ctx["p"]
    right, left = _support_box(ctx["lungs"]["right"], 0.5), _support_box(ctx["lungs"]["left"], 0.5)
    heart, tx = _support_box(ctx["final_heart"], 0.5), p["cx"] + p["trachea_dx"]
    return {"right lung": right, "left lung": left, "heart": heart,  # mediastinum: from the thoracic inlet down
            "mediastinum": _round_box([min(p["cx"] - p["med_hw"], heart[0]), p["apex"] - 0.04,
                                       max(p["cx"] + p["med_hw"], heart[2]), heart[3]]),
            "trachea": _round_box([tx - 0.02, p["apex"] - 0.08, tx + 0.02, p["carina"]]),
            "spine": _round_box([p["cx"] - 0.04, p["apex"] - 0.05, p["cx"] + 0.04, heart[3] + 0.06]),
            "right costophrenic angle": _round_box([right[0], right[3] - 0.1, right[0] + 0.1, right[3]]),
            "left costophrenic angle": _round_box([left[2] - 0.1, left[3] - 0.1, left[2], left[3]])}


# ---------------------------------------------------------------------------------------------------------------
# The report: one statement per finding (a finding on both sides in one), then negations of what is absent


def _sentence(rng, name, attrs):
    text = rng.choice(TEMPLATES[name]).format(
        **attrs, chambers="Dual-chamber" if attrs.get("dual") else "Single-chamber",
        leads="leads in the right atrium and right ventricle" if attrs.get("dual") else "a lead in the right ventricle")
    return text[0].upper() + text[1:]


def _report(rng, findings):
    """The report's statements [{text, boxes, labels}] in reading order, and the study's labels."""
    groups = {}
    for f in findings:
        groups.setdefault(f["name"] if f["name"] in ("pleural effusion", "atelectasis") else id(f), []).append(f)
    positive = []
    for group in groups.values():
        f = group[0]
        if len(group) == 1:
            text = _sentence(rng, f["name"], f["attrs"])
        elif f["name"] == "atelectasis" or f["attrs"]["size"] == group[1]["attrs"]["size"]:
            text = _sentence(rng, f["name"] + "+bilateral", f["attrs"])
        else:  # effusions of different sizes (right first: findings are sampled in SIDES order)
            text = f"{f['attrs']['size']} right and {group[1]['attrs']['size']} left pleural effusions."
            text = ("There are " + text) if rng.random() < 0.5 else text[0].upper() + text[1:]
        positive.append(dict(text=text, boxes=[g["box"] for g in group], labels={LABEL_OF[f["name"]]: 1},
                             name=f["name"]))
    present = {LABEL_OF[f["name"]] for f in findings}
    absent = set(CHEXPERT_LABELS) - present - {"No Finding"}
    wanted = {C, PE, PTX} & absent  # always negated; the others only sometimes
    wanted |= {label for label, prob in (("Edema", 0.4), ("Lung Lesion", 0.2), ("Fracture", 0.3), ("Pneumonia", 0.15))
               if label in absent and rng.random() < prob}
    if not {C, "Lung Opacity"} <= absent:
        wanted.discard("Pneumonia")  # "no pneumonia" beside an opacity would be a clinical judgement
    negative = []
    while wanted:
        text, negated = rng.choice([(t, neg) for t, neg, needs in NEGATIONS if neg <= wanted and needs <= absent])
        negative.append(dict(text=text, boxes=[], labels=dict.fromkeys(negated, 0)))
        wanted -= negated
    if "Cardiomegaly" in absent:
        text, negated = rng.choice(HEART_NEGATIONS)
        heart = [dict(text=text, boxes=[], labels=dict.fromkeys(negated, 0))]
    else:
        heart = [s for s in positive if s["name"] == "cardiomegaly"]
        if rng.random() < 0.3:
            heart.append(dict(text="The mediastinal contours are normal.", boxes=[],
                              labels={"Enlarged Cardiomediastinum": 0}))
    devices = [s for s in positive if s["name"] in DEVICES]
    lungs = [s for s in positive if s["name"] not in DEVICES and s["name"] != "cardiomegaly"] + negative
    statements = devices + (heart + lungs if rng.random() < 0.5 else lungs + heart)
    normal = not present - {"Support Devices"}
    if normal and rng.random() < 0.5:
        statements.append(dict(text="No acute cardiopulmonary process.", boxes=[], labels={}))
    labels = {"No Finding": 1} if normal else {}
    for s in statements:
        labels.update(s["labels"])
    return statements, {k: labels[k] for k in CHEXPERT_LABELS if k in labels}


def generate_study(seed, size=128, omit=()):
    """One study: {seed, image (np.uint8 HxW), findings [{name, box, attrs}], anatomy {name: box}, report,
    labels {CheXpert name: 0/1}, sentences [{text, boxes, labels}] (the report's)}. `omit` (indices into
    findings) renders the image without those findings, all else identical (a testing aid)."""
    rng = np.random.default_rng(seed)
    patient = _sample_patient(rng)
    plan = dict(patient=patient, findings=_sample_findings(rng, patient))
    image, visible, ctx = _render(plan, size, omit)
    findings = [dict(name=f["name"], box=_support_box(v, 0.01), attrs=f["attrs"])
                for f, v in zip(plan["findings"], visible)]
    sentences, labels = _report(random.Random(seed), findings)
    return dict(seed=seed, image=image, findings=findings, anatomy=_anatomy(ctx),
                report=" ".join(s["text"] for s in sentences), labels=labels,
                sentences=[{k: s[k] for k in ("text", "boxes", "labels")} for s in sentences])


# ---------------------------------------------------------------------------------------------------------------
# Records: one builder per task, in the paper's answer formats; None where the task does not apply


def _abnormal_boxes(study):
    """{finding name: boxes} of the study's abnormalities (not the devices), in report order."""
    groups = {}
    for f in study["findings"]:
        if f["name"] not in DEVICES:
            groups.setdefault(f["name"], []).append(f["box"])
    return groups


def _report_record(study, image, rng, rid):
    return make_record(rid, image, rng.choice(PROMPTS["report"]), study["report"], "report", labels=study["labels"])


def _classification_record(study, image, rng, rid):
    names = [k.lower() for k, v in study["labels"].items() if v == 1 and k != "No Finding"]
    return make_record(rid, image, rng.choice(PROMPTS["classification"]), classification_answer(names),
                       "classification", labels=study["labels"])


def _anatomy_record(study, image, rng, rid):
    name, box = rng.choice(list(study["anatomy"].items()))
    return make_record(rid, image, rng.choice(PROMPTS["anatomical_grounding"]).format(name=name),
                       location_answer(name, [box]), "anatomical_grounding", boxes=[box])


def _abnormality_record(study, image, rng, rid):
    """One finding (60 %) or all of them; None for a study without abnormality (no gold box, no reward)."""
    groups = _abnormal_boxes(study)
    if not groups:
        return None
    if rng.random() < 0.6:
        name = rng.choice(list(groups))
        return make_record(rid, image, rng.choice(PROMPTS["abnormality_grounding"]).format(name=name),
                           location_answer(name, groups[name]), "abnormality_grounding", boxes=groups[name])
    return make_record(rid, image, rng.choice(PROMPTS["abnormality_grounding_all"]), findings_answer(groups),
                       "abnormality_grounding", boxes=[b for boxes in groups.values() for b in boxes])


def _phrase_record(study, image, rng, rid):
    """A report sentence about one finding or device; None when there is none (a normal study without devices)."""
    sentences = [s for s in study["sentences"] if s["boxes"]]
    if not sentences:
        return None
    s = rng.choice(sentences)
    return make_record(rid, image, rng.choice(PROMPTS["phrase_grounding"]).format(phrase=s["text"]),
                       phrase_answer(s["boxes"]), "phrase_grounding", boxes=s["boxes"])


def _conversation_record(study, image, rng, rid):
    """2-3 exchanges: is X there (yes + its report sentence), where is it, then how severe or is Y there (no)."""
    groups = _abnormal_boxes(study)
    absent = [n for n in ("cardiomegaly", "pleural effusion", "pneumothorax", "consolidation", "edema", "rib fracture")
              if n not in groups]  # never empty: this world has no fractures
    ask = ["Is there any {} on this image?", "Do you see any {} on this chest X-ray?"]
    no = lambda name: (rng.choice(ask).format(name), f"No, there is no {name}.")
    if groups:
        name = rng.choice(list(groups))
        sentence = next(s["text"] for s in study["sentences"] if LABEL_OF[name] in s["labels"] and s["boxes"])
        boxes = groups[name]
        turns = [(rng.choice(ask).format(name), "Yes. " + sentence),
                 (rng.choice(["Where is it located?", "Can you show me where it is?"]),
                  f"It is located at the coordinates {format_boxes(boxes)} on the image.")]
        attrs = next(f["attrs"] for f in study["findings"] if f["name"] == name)
        grade = attrs.get("severity") or attrs.get("size")
        severity = ("How severe is it?", f"It is {grade}.")
        turns.append(severity if grade and rng.random() < 0.5 else no(rng.choice(absent)))
    else:
        boxes = []
        turns = [(rng.choice(["Are there any abnormalities on this chest X-ray?", "Is this chest X-ray normal?"]),
                  "No abnormalities are identified; the chest X-ray appears normal."), no(rng.choice(absent)),
                 ("Is the heart size normal?", "Yes, the heart size is normal.")]
    turns = turns[:rng.choice((2, 3))]
    record = make_record(rid, image, turns[0][0], turns[0][1], "conversation", boxes=boxes)
    for question, answer in turns[1:]:
        record["conversations"] += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return record


BUILDERS = {"report": _report_record, "classification": _classification_record,
            "anatomical_grounding": _anatomy_record, "abnormality_grounding": _abnormality_record,
            "phrase_grounding": _phrase_record, "conversation": _conversation_record}


def build_records(study, image_path, seed, tasks=None):
    """One record per task of `tasks` (default: records.TASKS) that applies, prompts drawn from `seed`. Skipped:
    abnormality grounding on studies without abnormality, phrase grounding on normal studies without devices."""
    rng = random.Random(seed)
    records = [BUILDERS[task](study, image_path, rng, f"synth-{seed}-{task}") for task in (tasks or TASKS)]
    return [r for r in records if r is not None]


NEEDS_ABNORMALITY = ("abnormality_grounding", "phrase_grounding")  # no finding, no gold box: see build_records


def is_abnormal(study_seed):
    """Whether generate_study(study_seed) draws findings, read off its first random draws without rendering it."""
    rng = np.random.default_rng(study_seed)
    _sample_patient(rng)
    return rng.random() >= 0.30  # _sample_findings' first draw


def parse_mix(text):
    """A task mix written "task=weight,...", as sft.py's --mix: DEFAULT_MIX with those tasks' weights replaced ("" is
    DEFAULT_MIX itself)."""
    mix = dict(DEFAULT_MIX)
    for item in filter(None, (part.strip() for part in text.split(","))):
        task, _, weight = (part.strip() for part in item.partition("="))
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if task not in DEFAULT_MIX or not value >= 0:
            raise ValueError(f"mix {text!r}: {item!r} is not task=weight, a weight >= 0 for one of "
                             f"{', '.join(DEFAULT_MIX)}")
        mix[task] = value
    if not any(mix.values()):
        raise ValueError(f"mix {text!r}: every task's weight is 0")
    return mix


class SyntheticRecords:
    """The records of the first n studies of a split, as a list whose items are made on access, the same every
    time, like a finite dataset's: record i is the i-th of those studies to which one of `tasks` applies (abnormality
    and phrase grounding need a finding), with a task drawn by `mix` among those that apply to it. The image travels
    in memory as record["image_array"]; record["study_seed"] lets a reader regenerate the study."""

    def __init__(self, split="train", n=None, size=128, tasks=None, mix=None, seed=0):
        self.split, self.size, self.seed = split, size, seed
        mix = mix or DEFAULT_MIX
        self.tasks = [t for t in (tasks or TASKS) if mix.get(t, 0) > 0]
        self.weights = [mix[t] for t in self.tasks]
        studies = range(SPLIT_OFFSET[split], SPLIT_OFFSET[split] + (n or 10_000))
        if all(t in NEEDS_ABNORMALITY for t in self.tasks):
            studies = [s for s in studies if is_abnormal(s)]
        self.studies = studies

    def __len__(self):
        return len(self.studies)

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        study_seed = self.studies[i]
        study = generate_study(study_seed, self.size)
        options = build_records(study, f"synthetic://{self.split}/{study_seed:08d}", study_seed, self.tasks)
        weights = [self.weights[self.tasks.index(r["task"])] for r in options]
        record = random.Random(f"{self.split}-{self.seed}-{i}").choices(options, weights)[0]
        record["image_array"], record["study_seed"] = study["image"], study_seed
        return record


def study_of(record, size=128):
    """The study a SyntheticRecords record was made from (the rule-based teacher of coldstart.py reads it)."""
    return generate_study(record["study_seed"], size)


def corpus_texts(n=2000):
    """Every prompt phrasing and all prompt and answer texts of n training studies (for the tiny BPE tokenizer)."""
    texts = [t.format(name="right lung", phrase="") for templates in PROMPTS.values() for t in templates]
    for seed in range(n):
        for record in build_records(generate_study(seed), "x", seed):
            texts += [turn["value"].replace("<image>\n", "") for turn in record["conversations"]]
    return texts


# ---------------------------------------------------------------------------------------------------------------
# Looking at it: a split written to disk, with a contact sheet

COLORS = {"cardiomegaly": "#ff4040", "pleural effusion": "#40a0ff", "pneumothorax": "#ffff40", "edema": "#40ff80",
          "consolidation": "#ff9020", "lung opacity": "#ffc080", "atelectasis": "#c060ff", "nodule": "#ff40ff",
          "mass": "#ff40ff"}


def main(argv=None):
    """`python data.py synth`: records of a split exactly as SyntheticRecords gives them to the training stages,
    their images as PNGs beside records.jsonl, and a contact sheet of the first 16 studies (findings boxed)."""
    parser = argparse.ArgumentParser(prog="data.py synth", description="Write a synthetic chest X-ray split.")
    parser.add_argument("--n", type=int, default=500, help="records (one study each)")
    parser.add_argument("--out", required=True, help="output folder: images/, records.jsonl, contact_sheet.png")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="drives the task draws (the studies depend on --split)")
    parser.add_argument("--split", default="train", choices=sorted(SPLIT_OFFSET))
    args = parser.parse_args(argv)
    source = SyntheticRecords(args.split, args.n, size=args.size, seed=args.seed)
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    records, tiles, prevalence = [], [], Counter()
    for i in range(len(source)):
        record = source[i]
        image = os.path.join("images", f"{args.split}_{record['study_seed']:08d}.png")  # relative: a portable folder
        Image.fromarray(record.pop("image_array")).save(os.path.join(args.out, image))
        records.append(dict(record, image=image))
        study = study_of(record, args.size)
        prevalence.update({f["name"] for f in study["findings"]} or {"normal"})
        if len(tiles) < 16:
            tiles.append({"image": study["image"], "lines": [(study["report"], "white")],
                          "boxes": [(f["box"], COLORS.get(f["name"], "#00ffff"), f["name"])
                                    for f in study["findings"]]})
    save_records(records, os.path.join(args.out, "records.jsonl"))
    contact_sheet(tiles, os.path.join(args.out, "contact_sheet.png"), side=2 * args.size, text_lines=9)
    print(f"{len(records)} studies ({args.split}, {args.size} px) -> {args.out}: records.jsonl, images/, "
          "contact_sheet.png")
    print("prevalence: " + ", ".join(f"{k} {v / len(records):.0%}" for k, v in prevalence.most_common()))
    print("records per task: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r["task"] for r in records).items())))


if __name__ == "__main__":
    main(sys.argv[1:])
