"""
converters.py: one command per public chest X-ray dataset, from its original files to records of the project.

    python data.py convert vindr-cxr --root /data/vindr-cxr/1.0.0 --split train --out out/vindr_train.jsonl

Every `convert_<dataset>(root, split=None, ...)` returns (records, summary). Records are built with
records.make_record, phrased with records.PROMPTS (the phrasing is picked by a hash of the record id, so a rerun
gives the same file) and checked with records.validate_record. The summary counts records per task, rows
skipped by reason and a few notes. Grounding boxes are normalized by the image size and rounded to 2
decimals; the `boxes` field holds exactly the boxes written in the answer. A box that cannot be right
(x_max <= x_min, y_max <= y_min, outside the image) is dropped and counted, never clipped. Image paths are
absolute; records also carry `source` (the dataset) so mixed files can be evaluated per dataset.
Only the standard library, numpy and PIL; pydicom (an optional extra) is imported when a DICOM is met.
"""

import argparse
import csv
import glob
import gzip
import inspect
import json
import math
import os
import re
import zlib
from collections import Counter, defaultdict

import numpy as np
from PIL import Image

from records import (CHEXPERT_LABELS, PROMPTS, box_iou, box_is_valid, classification_answer, findings_answer,
                     location_answer, make_record, phrase_answer, save_records, validate_record)

# The 14 CheXpert observations (MIMIC-CXR-JPG label file, CheXbert labels of CheXpert Plus). "No Finding"
# is kept in `labels` but never named as an abnormality, so answers list at most the other 13.
FRONTAL_VIEWS = ("PA", "AP")
VINDR_FUSION_IOU = 0.1  # the paper fuses VinDr-CXR's radiologists by weighted box fusion at IoU 0.1

# ----------------------------------------------------------------------------------------------------------
# small helpers: files, summary, phrasing


def new_summary():
    return {"records": Counter(), "skipped": Counter(), "notes": Counter()}


def read_csv(path):
    with (gzip.open(path, "rt", newline="") if path.endswith(".gz") else open(path, newline="")) as f:
        return list(csv.DictReader(f))


def read_text(path):
    with open(path) as f:
        return f.read()


def find_file(folder, *names):
    """The first of `names` that exists under `folder` (real releases ship some files gzipped, some not)."""
    for name in names:
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"none of {', '.join(names)} found in {folder}")


def first_existing(paths):
    return next((path for path in paths if os.path.exists(path)), None)


def to_float(value):
    """A coordinate from a CSV cell or JSON value; empty or missing -> nan (then counted as impossible)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def latest_file(folder, pattern):
    """The last, by name, of the files matching `pattern` (e.g. the newest version of an annotation file)."""
    matches = sorted(glob.glob(os.path.join(folder, pattern)))
    if not matches:
        raise FileNotFoundError(f"no {pattern} found in {folder}")
    return matches[-1]


def normalize_split(split, names):
    """'val' / 'valid' / 'validate' / 'validation' all name the validation split, whatever the dataset calls it."""
    if split is None or split in names:
        return split
    aliases = {"val", "valid", "validate", "validation"}
    for name in names:
        if split in aliases and name in aliases:
            return name
    raise ValueError(f"unknown split {split!r} for this dataset (known: {', '.join(names)})")


def pick(options, key):
    """A phrasing chosen by a hash of the record id: deterministic and independent of the order of rows."""
    return options[zlib.crc32(key.encode()) % len(options)]


def slug(text):
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def readable(name):
    """'Pleural effusion' -> 'pleural effusion'; acronyms such as 'ILD' stay as they are."""
    return name if name.isupper() else name.lower()


def image_ok(path, check_images, summary):
    if check_images and not os.path.exists(path):
        summary["skipped"]["image file missing"] += 1
        return False
    return True


def finish(records, summary):
    """Validate every record (a broken one is a bug here, not in the data) and count records per task."""
    duplicates = [rid for rid, n in Counter(r["id"] for r in records).items() if n > 1]
    if duplicates:
        raise ValueError(f"duplicate record ids (duplicated rows in the data?): {duplicates[:5]}")
    for record in records:
        validate_record(record)
        summary["records"][record["task"]] += 1
    return records, summary

# ----------------------------------------------------------------------------------------------------------
# boxes: checks, normalization, weighted box fusion


def box_problem(box, width, height):
    """Why a [x_min, y_min, x_max, y_max] box (pixels, or 0-1 with width = height = 1) is impossible, or None."""
    if not (width > 0 and height > 0):
        return "image size unknown"
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        return "box with a missing or non-finite coordinate"
    if box[2] <= box[0] or box[3] <= box[1]:
        return "box with x_max <= x_min or y_max <= y_min"
    if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
        return "box outside the image"
    return None


def possible_boxes(boxes, width, height, summary):
    """The boxes that can be right; the others are dropped and counted by reason (never clipped)."""
    kept = []
    for box in boxes:
        problem = box_problem(box, width, height)
        if problem:
            summary["skipped"][problem] += 1
        else:
            kept.append(box)
    return kept


def rounded_boxes(boxes, width, height, summary):
    """Possible pixel boxes -> the paper's 0-1 boxes, 2 decimals; a box too thin to survive rounding is dropped."""
    kept = []
    for box in boxes:
        box = [round(box[0] / width, 2), round(box[1] / height, 2), round(box[2] / width, 2), round(box[3] / height, 2)]
        if box_is_valid(box):
            kept.append(box)
        else:
            summary["skipped"]["box thinner than 0.01 of the image after rounding"] += 1
    return kept


def normalized_boxes(boxes, width, height, summary):
    return rounded_boxes(possible_boxes(boxes, width, height, summary), width, height, summary)


def weighted_box_fusion(boxes, scores=None, iou_threshold=VINDR_FUSION_IOU):
    """Fuse the boxes of one class drawn by several readers into one box per object (Solovyev et al.,
    "Weighted boxes fusion", 2021). Boxes are visited by decreasing score (all 1 when absent: input order);
    each joins the cluster whose fused box it overlaps most if that IoU is > iou_threshold, else it starts a
    new cluster. A fused box is the score-weighted mean of its members' coordinates, updated as members
    join. Unlike non-maximum suppression nothing is thrown away: every reader's box moves the result."""
    scores = [1.0] * len(boxes) if scores is None else scores
    clusters = []  # each: {"boxes": [...], "scores": [...], "fused": [x0, y0, x1, y1]}
    for i in sorted(range(len(boxes)), key=lambda i: -scores[i]):
        overlaps = [box_iou(boxes[i], c["fused"]) for c in clusters]
        best = max(range(len(clusters)), key=overlaps.__getitem__, default=None)
        if best is None or overlaps[best] <= iou_threshold:
            clusters.append({"boxes": [], "scores": []})
            best = len(clusters) - 1
        cluster = clusters[best]
        cluster["boxes"].append(boxes[i])
        cluster["scores"].append(scores[i])
        weights = np.array(cluster["scores"], dtype=float)
        cluster["fused"] = (weights @ np.array(cluster["boxes"], dtype=float) / weights.sum()).tolist()
    return [c["fused"] for c in clusters]

# ----------------------------------------------------------------------------------------------------------
# answers (formats of docs/paper.md, "Tasks, prompts and answer formats") and records


def chexpert_labels(row):
    """CheXpert columns (1.0 / 0.0 / -1.0 / empty) -> {observation: 0 or 1}; uncertain (-1) counts as positive."""
    def positive(value):
        try:
            return int(float(value) in (1.0, -1.0))
        except (TypeError, ValueError):  # empty cell or null: not mentioned, negative
            return 0
    return {name: positive(row[name]) for name in CHEXPERT_LABELS if name in row}


def labels_answer(labels):
    """The classification answer of CheXpert labels (uncertain already counted as positive)."""
    return classification_answer([readable(n) for n in CHEXPERT_LABELS if n != "No Finding" and labels.get(n)])


def report_and_classification(rid, image, text, labels, source, summary, no_text="no findings or impression text"):
    """The report record (labels attached when known) and the classification record of one image."""
    records = []
    extra = {"labels": labels} if labels is not None else {}
    if text:
        records.append(make_record(f"{rid}_report", image, pick(PROMPTS["report"], f"{rid}_report"), text, "report",
                                   source=source, **extra))
    else:
        summary["skipped"][f"report: {no_text}"] += 1
    if labels is not None:
        question = pick(PROMPTS["classification"], f"{rid}_classification")
        records.append(make_record(f"{rid}_classification", image, question, labels_answer(labels),
                                   "classification", source=source, labels=labels))
    else:
        summary["skipped"]["classification: no CheXpert labels"] += 1
    return records


def grounding_record(rid, image, prompt_key, answer, boxes, task, source, **fill):
    question = pick(PROMPTS[prompt_key], rid).format(**fill)
    return make_record(rid, image, question, answer, task, boxes=boxes, source=source)

# ----------------------------------------------------------------------------------------------------------
# images: sizes, DICOM


def pydicom_module():
    try:
        import pydicom
    except ImportError:
        raise RuntimeError("reading DICOM files needs pydicom (an optional extra): pip install pydicom") from None
    return pydicom


def image_size(path):
    """(width, height) from the file header, without decoding the pixels."""
    if path.lower().endswith((".dcm", ".dicom")):
        header = pydicom_module().dcmread(path, stop_before_pixels=True)
        return int(header.Columns), int(header.Rows)
    with Image.open(path) as image:
        return image.size


def dicom_to_png(path, out_path, max_side=None):
    """A DICOM radiograph (data.read_dicom: LUTs applied, MONOCHROME1 inverted) as an 8-bit grayscale PNG,
    downscaled to `max_side` at most: boxes are normalized, so they do not change."""
    from data import read_dicom  # data.py brings torch: only for the datasets that ship DICOM
    image = Image.fromarray(read_dicom(path))
    if max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    image.save(out_path)
    return out_path


def read_image_sizes(path):
    """{image_id: (width, height)} from a CSV with image_id,width,height or from the authors' JSON
    image_resolutions_<split>.json, {image_id: [Rows, Columns]} (height first, as DICOM)."""
    if path.endswith(".json"):
        with open(path) as f:
            return {key: (int(rows_cols[1]), int(rows_cols[0])) for key, rows_cols in json.load(f).items()}
    return {row["image_id"]: (int(float(row["width"])), int(float(row["height"]))) for row in read_csv(path)}

# ----------------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG (+ MIMIC-CXR reports): report generation and CheXpert-label classification


def mimic_table(root, name):
    """One of MIMIC-CXR-JPG's mimic-cxr-2.0.0-{split,chexpert,metadata}.csv.gz (or unzipped) tables."""
    return read_csv(find_file(root, f"mimic-cxr-2.0.0-{name}.csv.gz", f"mimic-cxr-2.0.0-{name}.csv"))


def mimic_study_folder(root, subject_id, study_id):
    return os.path.join(os.path.abspath(root), "files", f"p{subject_id[:2]}", f"p{subject_id}", f"s{study_id}")


def report_sections(text):
    """{'FINDINGS': ..., 'IMPRESSION': ...} from a free-text MIMIC-CXR report (upper-case headers ending ':')."""
    parts = re.split(r"(?m)^\s*([A-Z][A-Z &/()-]*[A-Z)]):", text)
    return {parts[i].strip(): " ".join(parts[i + 1].split()) for i in range(1, len(parts) - 1, 2)}


def findings_else_impression(sections):
    return sections.get("FINDINGS") or sections.get("FINDINGS AND IMPRESSION") or sections.get("IMPRESSION") or ""


def read_filtered_reports(path):
    """Pre-filtered (e.g. comparison-free) report texts keyed by dicom_id or study_id (no 's'): a CSV with a
    dicom_id or study_id column and findings / impression (or report / text) columns, or a folder of
    <study_id>.txt files."""
    if os.path.isdir(path):
        return {name[:-4].lstrip("s"): " ".join(read_text(os.path.join(path, name)).split())
                for name in os.listdir(path) if name.endswith(".txt")}
    texts = {}
    for row in read_csv(path):
        key = row.get("dicom_id") or (row.get("study_id") or "").lstrip("s")
        text = row.get("findings") or row.get("impression") or row.get("report") or row.get("text") or ""
        texts[key] = " ".join(text.split())
    return texts


def convert_mimic_cxr(root, split=None, reports_root=None, filtered_reports=None, check_images=True):
    """Frontal (PA/AP) images of the official split: a report record (findings, else impression; the
    filtered text instead when `filtered_reports` is given) and a classification record per image.
    `reports_root`: where files/pXX/pXXXXXXXX/sXXXXXXXX.txt of MIMIC-CXR live (default: `root`)."""
    split = normalize_split(split, ("train", "validate", "test"))
    summary, records = new_summary(), []
    view_of = {r["dicom_id"]: r["ViewPosition"] for r in mimic_table(root, "metadata")}
    labels_of = {r["study_id"]: chexpert_labels(r) for r in mimic_table(root, "chexpert")}
    filtered = read_filtered_reports(filtered_reports) if filtered_reports else None
    report_cache = {}
    for row in mimic_table(root, "split"):
        if split and row["split"] != split:
            continue
        dicom_id, study_id, subject_id = row["dicom_id"], row["study_id"], row["subject_id"]
        if view_of.get(dicom_id) not in FRONTAL_VIEWS:
            summary["skipped"]["not a frontal (PA/AP) view"] += 1
            continue
        image = os.path.join(mimic_study_folder(root, subject_id, study_id), f"{dicom_id}.jpg")
        if not image_ok(image, check_images, summary):
            continue
        if filtered is not None:
            text, no_text = filtered.get(dicom_id) or filtered.get(study_id), "no text in the filtered reports"
        else:
            path = mimic_study_folder(reports_root or root, subject_id, study_id) + ".txt"
            if not os.path.exists(path):
                text, no_text = None, "report file missing (wrong --reports-root?)"
            else:
                if study_id not in report_cache:  # several frontal images share a study's report
                    report_cache[study_id] = findings_else_impression(report_sections(read_text(path)))
                text, no_text = report_cache[study_id], "no findings or impression section"
        records += report_and_classification(f"mimic-cxr_{dicom_id}", image, text, labels_of.get(study_id),
                                             "mimic-cxr", summary, no_text)
    return finish(records, summary)

# ----------------------------------------------------------------------------------------------------------
# CheXpert Plus: reports and CheXbert labels


def convert_chexpert_plus(root, split=None, labels_file=None, check_images=True):
    """Frontal images of df_chexpert_plus_240401.csv (split 'train' / 'valid'): a report record (section_findings,
    else section_impression) and a classification record from the CheXbert labels, by default
    chexbert_labels/report_fixed.json (JSON lines: path_to_image + the 14 observations, 1 / 0 / -1 / null).
    Images: PNG/<path_to_image as .png> (the PNG release) or <path_to_image> under `root`."""
    split = normalize_split(split, ("train", "valid"))
    summary, records = new_summary(), []
    labels_file = labels_file or os.path.join(root, "chexbert_labels", "report_fixed.json")
    labels_of = {}
    if os.path.exists(labels_file):
        with open(labels_file) as f:
            for line in filter(str.strip, f):
                row = json.loads(line)
                labels_of[row["path_to_image"]] = chexpert_labels(row)
    else:
        summary["notes"][f"no label file {labels_file}: reports only"] += 1
    for row in read_csv(find_file(root, "df_chexpert_plus_240401.csv", "df_chexpert_plus_240401.csv.gz")):
        if split and row["split"] != split:
            continue
        if row["frontal_lateral"] != "Frontal":
            summary["skipped"]["not a frontal view"] += 1
            continue
        relative = row["path_to_image"]
        candidates = [os.path.join(root, "PNG", os.path.splitext(relative)[0] + ".png"), os.path.join(root, relative)]
        image = os.path.abspath(first_existing(candidates) or candidates[0])
        if not image_ok(image, check_images, summary):
            continue
        text = " ".join((row.get("section_findings") or row.get("section_impression") or "").split())
        rid = "chexpert-plus_" + slug(os.path.splitext(relative)[0])
        records += report_and_classification(rid, image, text, labels_of.get(relative), "chexpert-plus", summary)
    return finish(records, summary)

# ----------------------------------------------------------------------------------------------------------
# Chest ImaGenome: anatomical grounding from the scene graphs


def convert_chest_imagenome(root, split=None, mimic_root=None, regions_per_image=1, check_images=True):
    """Anatomical regions of silver_dataset/scene_graph/<dicom_id>_SceneGraph.json (objects[].bbox_name and
    original_x1..original_y2 in pixels of the MIMIC-CXR image; the scene graph has no image size: it comes
    from MIMIC-CXR-JPG's metadata Rows/Columns, else from the image file). `split`: silver_dataset/splits/
    <split>.csv. `regions_per_image` regions per image (chosen by a hash; 0 = all 36), like the authors'
    one random region per image: all regions would be ~30 near-identical records per image."""
    split = normalize_split(split, ("train", "valid", "test"))
    summary, records = new_summary(), []
    mimic_root = mimic_root or root
    silver = os.path.join(root, "silver_dataset") if os.path.isdir(os.path.join(root, "silver_dataset")) else root
    graph_dir = os.path.join(silver, "scene_graph")
    if split:
        dicom_ids = [row["dicom_id"] for row in read_csv(os.path.join(silver, "splits", f"{split}.csv"))]
    else:
        suffix = "_SceneGraph.json"
        dicom_ids = sorted(name[: -len(suffix)] for name in os.listdir(graph_dir) if name.endswith(suffix))
    try:
        metadata = {r["dicom_id"]: r for r in mimic_table(mimic_root, "metadata")}
    except FileNotFoundError:
        metadata = {}
        summary["notes"]["no MIMIC-CXR metadata: views and sizes from the scene graphs and images"] += 1
    for dicom_id in dicom_ids:
        graph_path = os.path.join(graph_dir, f"{dicom_id}_SceneGraph.json")
        if not os.path.exists(graph_path):
            summary["skipped"]["no scene graph"] += 1
            continue
        with open(graph_path) as f:
            graph = json.load(f)
        meta = metadata.get(dicom_id, {})
        # Chest ImaGenome annotated frontal images only; a view that says otherwise is still left out
        if (meta.get("ViewPosition") or graph.get("viewpoint") or "PA") not in FRONTAL_VIEWS:
            summary["skipped"]["not a frontal (PA/AP) view"] += 1
            continue
        folder = mimic_study_folder(mimic_root, str(meta.get("subject_id") or graph["patient_id"]),
                                    str(meta.get("study_id") or graph["study_id"]))
        image = os.path.join(folder, f"{dicom_id}.jpg")
        if not image_ok(image, check_images, summary):
            continue
        if meta.get("Rows") and meta.get("Columns"):
            width, height = int(float(meta["Columns"])), int(float(meta["Rows"]))
        elif os.path.exists(image):
            width, height = image_size(image)
        else:
            summary["skipped"]["no image size (no metadata row, no image file)"] += 1
            continue
        regions = {}
        for obj in graph["objects"]:
            box = [to_float(obj.get(f"original_{k}")) for k in ("x1", "y1", "x2", "y2")]
            boxes = normalized_boxes([box], width, height, summary)
            if boxes:
                regions[obj["bbox_name"]] = boxes
        by_hash = sorted(regions, key=lambda name: zlib.crc32(f"{dicom_id}/{name}".encode()))
        chosen = by_hash[: regions_per_image or None]
        if len(chosen) < len(regions):
            summary["notes"]["regions left out (regions_per_image)"] += len(regions) - len(chosen)
        for name in chosen:
            rid = f"chest-imagenome_{dicom_id}_{slug(name)}"
            records.append(grounding_record(rid, image, "anatomical_grounding", location_answer(name, regions[name]),
                                            regions[name], "anatomical_grounding", "chest-imagenome", name=name))
    return finish(records, summary)

# ----------------------------------------------------------------------------------------------------------
# VinDr-CXR: abnormality grounding, one finding and all findings, radiologists fused


def convert_vindr_cxr(root, split=None, annotations=None, image_sizes=None, image_dir=None, max_side=1024,
                      keep_no_finding=True, check_images=True):
    """annotations/annotations_<split>.csv (image_id, rad_id, class_name, x_min, y_min, x_max, y_max in
    pixels; 'No finding' rows have no box; the Kaggle train.csv, with class_id, reads the same). Per image and
    class, the radiologists' possible boxes are fused by weighted box fusion at IoU 0.1; each image gives one
    record per class and one all-findings record ("No finding" images: the all-findings record, no box,
    unless keep_no_finding=False). Images: <split>/<image_id>.dicom|.dcm (converted to PNG into `image_dir`,
    at most `max_side` pixels) or a pre-converted <split>[_png|_jpg]/<image_id>.png|.jpg. Image sizes: from
    `image_sizes` (see read_image_sizes) if given (needed when the PNGs were resized), else from the files."""
    splits = [normalize_split(split, ("train", "test"))] if split else ["train", "test"]
    summary, records = new_summary(), []
    sizes = read_image_sizes(image_sizes) if image_sizes else {}
    for split_name in splits:
        kaggle = ["train.csv"] if split_name == "train" else []
        try:
            table = annotations or find_file(root, f"annotations/annotations_{split_name}.csv", *kaggle)
        except FileNotFoundError:
            if split:
                raise
            summary["notes"][f"no annotation file for split {split_name}"] += 1  # e.g. only train downloaded
            continue
        boxes_of = defaultdict(lambda: defaultdict(list))  # image_id -> class_name -> radiologists' pixel boxes
        for row in read_csv(table):
            classes = boxes_of[row["image_id"]]
            if row["class_name"] != "No finding":
                classes[row["class_name"]].append([to_float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")])
        folders = [os.path.join(root, split_name + suffix) for suffix in ("", "_png", "_jpg")]
        for image_id, classes in boxes_of.items():
            found = first_existing(os.path.join(folder, image_id + ext) for folder in folders
                                   for ext in (".dicom", ".dcm", ".png", ".jpg", ".jpeg"))
            if found is None and check_images:
                summary["skipped"]["image file missing"] += 1
                continue
            if not classes:
                summary["notes"]["images with no finding"] += 1
                if not keep_no_finding:
                    continue
            size = sizes.get(image_id) or (image_size(found) if found else None)
            if size is None and classes:
                summary["skipped"]["no image size (no image file, not in image_sizes)"] += 1
                continue
            image = found or os.path.join(folders[0], image_id + ".png")
            if image.lower().endswith((".dicom", ".dcm")):
                if image_dir is None:
                    raise ValueError("VinDr-CXR DICOMs are converted to PNG: give image_dir (--image-dir)")
                png = os.path.join(image_dir, split_name, image_id + ".png")
                image = png if os.path.exists(png) else dicom_to_png(image, png, max_side)
            image = os.path.abspath(image)
            fused = {}
            for class_name in sorted(classes):
                drawn = possible_boxes(classes[class_name], *size, summary)
                summary["notes"]["radiologist boxes fused"] += len(drawn)
                boxes = rounded_boxes(weighted_box_fusion(drawn, iou_threshold=VINDR_FUSION_IOU), *size, summary)
                summary["notes"]["fused boxes kept"] += len(boxes)
                if boxes:
                    fused[class_name] = boxes
            if classes and not fused:
                summary["skipped"]["image whose boxes were all dropped"] += 1
                continue
            for class_name, boxes in fused.items():
                name = readable(class_name)
                rid = f"vindr-cxr_{image_id}_{slug(class_name)}"
                records.append(grounding_record(rid, image, "abnormality_grounding", location_answer(name, boxes),
                                                boxes, "abnormality_grounding", "vindr-cxr", name=name))
            all_boxes = [box for boxes in fused.values() for box in boxes]
            summary["notes"]["all-findings records (one per image)"] += 1
            records.append(grounding_record(f"vindr-cxr_{image_id}_all", image, "abnormality_grounding_all",
                                            findings_answer({readable(n): b for n, b in fused.items()}), all_boxes,
                                            "abnormality_grounding", "vindr-cxr"))
    return finish(records, summary)

# ----------------------------------------------------------------------------------------------------------
# MS-CXR and PadChest-GR: phrase grounding


def convert_ms_cxr(root, split=None, mimic_root=None, check_images=True):
    """MS_CXR_Local_Alignment_v*.csv (dicom_id, label_text, path, x, y, w, h, image_width, image_height and,
    from v1.1.0, split train / val / test): one record per (image, phrase) with all its boxes, x, y, w, h
    pixels -> normalized corners. Without a split column the official MIMIC-CXR split of `mimic_root` is used.
    Images: `path` (files/pXX/...jpg) under `mimic_root` (default: `root`)."""
    summary, records = new_summary(), []
    mimic_root = mimic_root or root
    rows = read_csv(latest_file(root, "MS_CXR_Local_Alignment_v*.csv"))
    if split and rows and "split" in rows[0]:
        split = normalize_split(split, ("train", "val", "test"))
        rows = [row for row in rows if row["split"] == split]
    elif split:
        split = normalize_split(split, ("train", "validate", "test"))
        split_of = {r["dicom_id"]: r["split"] for r in mimic_table(mimic_root, "split")}
        rows = [row for row in rows if split_of.get(row["dicom_id"]) == split]
    phrases = defaultdict(list)  # (dicom_id, phrase) -> rows, in file order
    for row in rows:
        phrases[(row["dicom_id"], " ".join(row["label_text"].split()))].append(row)
    number_in_image = Counter()
    for (dicom_id, phrase), group in phrases.items():
        image = os.path.abspath(os.path.join(mimic_root, group[0]["path"]))
        number_in_image[dicom_id] += 1
        if not image_ok(image, check_images, summary):
            continue
        width, height = to_float(group[0]["image_width"]), to_float(group[0]["image_height"])
        xywh = [[to_float(r[k]) for k in ("x", "y", "w", "h")] for r in group]
        boxes = normalized_boxes([[x, y, x + w, y + h] for x, y, w, h in xywh], width, height, summary)
        if not boxes:
            summary["skipped"]["phrase whose boxes were all dropped"] += 1
            continue
        rid = f"ms-cxr_{dicom_id}_{number_in_image[dicom_id]}"
        records.append(grounding_record(rid, image, "phrase_grounding", phrase_answer(boxes), boxes, "phrase_grounding",
                                        "ms-cxr", phrase=phrase))
    return finish(records, summary)


def convert_padchest_gr(root, split=None, check_images=True):
    """grounded_reports_*.json, a list of {"ImageID", "findings": [{"sentence_en", "boxes": [[x_min, y_min,
    x_max, y_max] in 0-1], ...}]}: one record per sentence that has boxes. Splits (train / validation / test):
    master_table.csv (ImageID, split). Images: PadChest_GR/ (or images_grounding/) / <ImageID>."""
    split = normalize_split(split, ("train", "validation", "test"))
    summary, records = new_summary(), []
    with open(latest_file(root, "grounded_reports_*.json")) as f:
        studies = json.load(f)
    split_of = {}
    if split:
        master_table = read_csv(find_file(root, "master_table.csv", "master_table.csv.gz"))
        split_of = {row["ImageID"]: row["split"] for row in master_table}
    folders = ("PadChest_GR", "images_grounding", "Padchest_GR_files/PadChest_GR", "images")
    image_folder = next((os.path.join(root, f) for f in folders if os.path.isdir(os.path.join(root, f))), root)
    for study in studies:
        image_id = study["ImageID"]
        if split and split_of.get(image_id) != split:
            if image_id not in split_of:
                summary["skipped"]["image not in master_table.csv"] += 1
            continue
        image = os.path.abspath(os.path.join(image_folder, image_id))
        if not image_ok(image, check_images, summary):
            continue
        for number, finding in enumerate(study.get("findings", [])):
            phrase = " ".join((finding.get("sentence_en") or "").split())
            if not finding.get("boxes") or not phrase:
                summary["skipped"]["sentence without a box" if phrase else "sentence without English text"] += 1
                continue
            boxes = normalized_boxes([[to_float(v) for v in box] for box in finding["boxes"]], 1.0, 1.0, summary)
            if not boxes:
                summary["skipped"]["sentence whose boxes were all dropped"] += 1
                continue
            rid = f"padchest-gr_{os.path.splitext(image_id)[0]}_{number}"
            records.append(grounding_record(rid, image, "phrase_grounding", phrase_answer(boxes), boxes,
                                            "phrase_grounding", "padchest-gr", phrase=phrase))
    return finish(records, summary)

# ----------------------------------------------------------------------------------------------------------
# command line


CONVERTERS = {"mimic-cxr": convert_mimic_cxr, "chexpert-plus": convert_chexpert_plus,
              "chest-imagenome": convert_chest_imagenome, "vindr-cxr": convert_vindr_cxr,
              "ms-cxr": convert_ms_cxr, "padchest-gr": convert_padchest_gr}


def format_summary(dataset, out, records, summary):
    lines = [f"{dataset}: {len(records)} records -> {out}", "records per task:"]
    lines += [f"  {task:<28} {n:>8}" for task, n in sorted(summary["records"].items())] or ["  (none)"]
    lines.append("skipped, by reason:")
    lines += [f"  {reason:<52} {n:>8}" for reason, n in summary["skipped"].most_common()] or ["  (none)"]
    if summary["notes"]:
        lines.append("notes:")
        lines += [f"  {note:<52} {n:>8}" for note, n in summary["notes"].most_common()]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python data.py convert", description="Dataset files -> records (JSONL).")
    parser.add_argument("dataset", choices=sorted(CONVERTERS))
    parser.add_argument("--root", required=True, help="the dataset's folder, as downloaded")
    parser.add_argument("--out", required=True, help="output .jsonl")
    parser.add_argument("--split", help="official split (default: all)")
    parser.add_argument("--mimic-root", help="chest-imagenome, ms-cxr: MIMIC-CXR-JPG folder (images, metadata)")
    parser.add_argument("--reports-root", help="mimic-cxr: MIMIC-CXR folder holding files/pXX/pXXXXXXXX/sXXXXXXXX.txt")
    parser.add_argument("--filtered-reports", help="mimic-cxr: CSV or folder of filtered (comparison-free) reports")
    parser.add_argument("--labels-file", help="chexpert-plus: CheXbert labels (JSON lines)")
    parser.add_argument("--annotations", help="vindr-cxr: this CSV, not annotations/annotations_<split>.csv")
    parser.add_argument("--image-sizes", help="vindr-cxr: CSV image_id,width,height or JSON {image_id: [rows, cols]}")
    parser.add_argument("--image-dir", help="vindr-cxr: where DICOMs are converted to PNG (default: <out>_images)")
    parser.add_argument("--max-side", type=int, help="vindr-cxr: longest side of converted PNGs (default 1024)")
    parser.add_argument("--regions-per-image", type=int, help="chest-imagenome: regions per image (default 1; 0 = all)")
    parser.add_argument("--drop-no-finding", dest="keep_no_finding", action="store_false", default=None,
                        help="vindr-cxr: no record for 'No finding' images")
    parser.add_argument("--no-image-check", dest="check_images", action="store_false", default=None,
                        help="write records even when the image file is not there (yet)")
    args = parser.parse_args(argv)
    convert = CONVERTERS[args.dataset]
    accepted = inspect.signature(convert).parameters
    options = {k: v for k, v in vars(args).items() if v is not None and k not in ("dataset", "root", "out", "split")}
    wrong = [k for k in options if k not in accepted]
    if wrong:
        parser.error(f"{', '.join('--' + k.replace('_', '-') for k in wrong)} does not apply to {args.dataset}")
    if "image_dir" in accepted and "image_dir" not in options:
        options["image_dir"] = os.path.splitext(args.out)[0] + "_images"
    records, summary = convert(args.root, split=args.split, **options)
    save_records(records, args.out)
    print(format_summary(args.dataset, args.out, records, summary))
    return summary


if __name__ == "__main__":
    main()
