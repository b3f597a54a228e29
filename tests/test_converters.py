"""Tests of converters.py on tiny fake datasets written in each dataset's real layout (file names, columns,
id formats, nested JSON, gzip where the real files are gzipped). The make_<dataset> builders also make the
fake trees of the counts in docs/datasets.md. Run: python -m pytest tests/test_converters.py"""

import csv
import gzip
import json
import os
import sys

import pytest
from PIL import Image

import converters
from records import NO_ABNORMALITY, PROMPTS, load_records, parse_boxes, validate_record

CHEXPERT_COLUMNS = list(converters.CHEXPERT_LABELS)


def write_csv(path, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with (gzip.open(path, "wt", newline="") if path.endswith(".gz") else open(path, "w", newline="")) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_image(path, size=(64, 48)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("L", size, 128).save(path)


def write_json(path, obj, lines=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        if lines:
            f.writelines(json.dumps(o) + "\n" for o in obj)
        else:
            json.dump(obj, f)


def check(records):
    """Every record is valid, and a grounding record's boxes are exactly those written in its answer."""
    for record in records:
        validate_record(record)
        if "boxes" in record:
            assert parse_boxes(record["conversations"][1]["value"]) == record["boxes"]
    return records


def by_task(records, task):
    return [r for r in records if r["task"] == task]


def answer(record):
    return record["conversations"][1]["value"]


def question(record):
    return record["conversations"][0]["value"].removeprefix("<image>\n")

# ----------------------------------------------------------------------------------------------------------
# boxes and fusion


def test_weighted_box_fusion_hand_examples():
    wbf = converters.weighted_box_fusion
    assert wbf([[0, 0, 10, 10], [2, 0, 12, 10]]) == [[1, 0, 11, 10]]  # IoU 0.67: one object, mean box
    assert wbf([[0, 0, 10, 10], [9, 9, 20, 20]]) == [[0, 0, 10, 10], [9, 9, 20, 20]]  # IoU 0.005: two objects
    assert wbf([[0, 0, 10, 10], [0, 0, 1, 10]]) == [[0, 0, 10, 10], [0, 0, 1, 10]]  # IoU exactly 0.1: not > 0.1
    assert wbf([[0, 0, 10, 10], [4, 0, 14, 10]], scores=[3, 1]) == [[1, 0, 11, 10]]  # weighted by score
    # two readers agree, a third box far away stays its own object; clusters come in order of score
    boxes = [[50, 50, 60, 60], [0, 0, 10, 10], [0, 0, 10, 12]]
    assert wbf(boxes, scores=[0.5, 1, 1]) == [[0, 0, 10, 11], [50, 50, 60, 60]]
    assert wbf([]) == []


def test_impossible_boxes_are_dropped_and_counted_never_clipped():
    summary = converters.new_summary()
    boxes = [[10, 10, 50, 40], [50, 10, 50, 40], [10, 40, 50, 20], [-1, 0, 10, 10], [0, 0, 101, 10],
             [0, 0, 0.2, 10], [float("nan"), 0, 1, 1]]
    assert converters.normalized_boxes(boxes, 100, 50, summary) == [[0.1, 0.2, 0.5, 0.8]]
    assert summary["skipped"] == {"box with x_max <= x_min or y_max <= y_min": 2, "box outside the image": 2,
                                  "box thinner than 0.01 of the image after rounding": 1,
                                  "box with a missing or non-finite coordinate": 1}

# ----------------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG + reports


MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 COMPARISON:  Chest radiograph from ___.

 FINDINGS:

 The heart is mildly enlarged.  There is mild pulmonary
 edema.  No pneumothorax.

 IMPRESSION:

 Cardiomegaly and mild edema.
"""
MIMIC_IMAGES = [  # dicom_id, study_id, subject_id, split, ViewPosition
    ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "50414267", "10000032", "train", "PA"),
    ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "50414267", "10000032", "train", "LATERAL"),
    ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "53189527", "10000032", "test", "AP"),
    ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "57375967", "10000764", "validate", "PA")]


def make_mimic_cxr(root):
    """Study 50414267 (train): a PA and a lateral image, report, CheXpert row. Study 53189527 (test): AP,
    impression only, no CheXpert row. Study 57375967 (validate): PA, "No Finding", no report file."""
    write_csv(f"{root}/mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
              [(d, st, su, sp) for d, st, su, sp, _ in MIMIC_IMAGES])
    write_csv(f"{root}/mimic-cxr-2.0.0-metadata.csv.gz",
              ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
               "Columns"],
              [(d, su, st, "CHEST (PA AND LAT)", v, 3056, 2544) for d, st, su, _, v in MIMIC_IMAGES])
    labels = {name: "" for name in CHEXPERT_COLUMNS}
    labels.update({"Cardiomegaly": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0"})
    write_csv(f"{root}/mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id"] + CHEXPERT_COLUMNS,
              [["10000032", "50414267"] + [labels[n] for n in CHEXPERT_COLUMNS],
               ["10000764", "57375967"] + ["1.0" if n == "No Finding" else "" for n in CHEXPERT_COLUMNS]])
    for dicom_id, study, subject, _, _ in MIMIC_IMAGES:
        write_image(f"{root}/files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg")
    with open(f"{root}/files/p10/p10000032/s50414267.txt", "w") as f:
        f.write(MIMIC_REPORT)
    with open(f"{root}/files/p10/p10000032/s53189527.txt", "w") as f:
        f.write(" FINAL REPORT\n INDICATION: ___\n\n IMPRESSION: \n No acute cardiopulmonary process.\n")


def test_mimic_cxr_reports_labels_frontal_only(tmp_path):
    root = str(tmp_path / "mimic-cxr-jpg")
    make_mimic_cxr(root)
    pa, _, ap, normal = (dicom_id for dicom_id, *_ in MIMIC_IMAGES)
    records, summary = converters.convert_mimic_cxr(root)
    check(records)
    assert summary["records"] == {"report": 2, "classification": 2}
    assert summary["skipped"] == {"not a frontal (PA/AP) view": 1,
                                  "classification: no CheXpert labels": 1,  # the test study has no row
                                  "report: report file missing (wrong --reports-root?)": 1}
    by_id = {r["id"]: r for r in records}
    report = by_id[f"mimic-cxr_{pa}_report"]
    assert answer(report) == "The heart is mildly enlarged. There is mild pulmonary edema. No pneumothorax."
    assert question(report) in PROMPTS["report"]
    assert report["image"] == os.path.abspath(f"{root}/files/p10/p10000032/s50414267/{pa}.jpg")
    # uncertain (-1) counts as positive; 0 and empty are negative; "No Finding" is never an abnormality
    labels = by_id[f"mimic-cxr_{pa}_classification"]
    assert answer(labels) == "The following abnormalities are identified: cardiomegaly and edema."
    assert question(labels) in PROMPTS["classification"]
    assert labels["labels"]["Edema"] == 1 and labels["labels"]["Pleural Effusion"] == 0
    assert report["labels"] == labels["labels"]
    assert answer(by_id[f"mimic-cxr_{normal}_classification"]) == NO_ABNORMALITY
    assert answer(by_id[f"mimic-cxr_{ap}_report"]) == "No acute cardiopulmonary process."  # no findings: impression


def test_mimic_cxr_splits_filtered_reports_and_missing_images(tmp_path):
    root = str(tmp_path / "mimic-cxr-jpg")
    make_mimic_cxr(root)
    pa = MIMIC_IMAGES[0][0]
    records, _ = converters.convert_mimic_cxr(root, split="train")
    assert {r["id"] for r in records} == {f"mimic-cxr_{pa}_report", f"mimic-cxr_{pa}_classification"}
    assert len(converters.convert_mimic_cxr(root, split="valid")[0]) == 1  # 'valid' means MIMIC's 'validate'
    with pytest.raises(ValueError):
        converters.convert_mimic_cxr(root, split="dev")
    filtered = f"{root}/filtered_reports.csv"
    write_csv(filtered, ["study_id", "findings", "impression"], [("s50414267", "The heart is mildly enlarged.", "")])
    records, summary = converters.convert_mimic_cxr(root, filtered_reports=filtered)
    assert [answer(r) for r in by_task(records, "report")] == ["The heart is mildly enlarged."]
    assert summary["skipped"]["report: no text in the filtered reports"] == 2
    os.remove(f"{root}/files/p10/p10000032/s50414267/{pa}.jpg")
    records, summary = converters.convert_mimic_cxr(root, split="train")
    assert records == [] and summary["skipped"]["image file missing"] == 1
    assert len(converters.convert_mimic_cxr(root, split="train", check_images=False)[0]) == 2

# ----------------------------------------------------------------------------------------------------------
# CheXpert Plus


CHEXPERT_PLUS_IMAGES = ["train/patient00001/study1/view1_frontal.jpg", "train/patient00001/study1/view2_lateral.jpg",
                        "valid/patient64541/study1/view1_frontal.jpg"]


def make_chexpert_plus(root):
    """A train study (frontal + lateral, findings and impression), a valid frontal image (impression only);
    PNG release layout; CheXbert labels "No Finding" and an uncertain pleural effusion."""
    header = ["path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id", "report",
              "section_findings", "section_impression", "split"]
    frontal, lateral, valid = CHEXPERT_PLUS_IMAGES
    write_csv(f"{root}/df_chexpert_plus_240401.csv", header, [
        (frontal, "", "Frontal", "AP", "patient00001", "...", "Heart size is normal.\n Lungs are clear.",
         "No acute process.", "train"),
        (lateral, "", "Lateral", "", "patient00001", "...", "x", "y", "train"),
        (valid, "", "Frontal", "PA", "patient64541", "...", "", "Small left effusion.", "valid")])
    for path in (frontal, valid):
        write_image(f"{root}/PNG/{path[:-4]}.png")
    empty = {n: None for n in CHEXPERT_COLUMNS}
    write_json(f"{root}/chexbert_labels/report_fixed.json",
               [{"path_to_image": frontal, **empty, "No Finding": 1.0},
                {"path_to_image": valid, **empty, "Pleural Effusion": -1.0}], lines=True)


def test_chexpert_plus(tmp_path):
    root = str(tmp_path / "chexpert-plus")
    make_chexpert_plus(root)
    records, summary = converters.convert_chexpert_plus(root)
    check(records)
    assert summary["records"] == {"report": 2, "classification": 2}
    assert summary["skipped"] == {"not a frontal view": 1}
    assert {r["id"]: answer(r) for r in by_task(records, "report")} == {
        "chexpert-plus_train_patient00001_study1_view1_frontal_report": "Heart size is normal. Lungs are clear.",
        "chexpert-plus_valid_patient64541_study1_view1_frontal_report": "Small left effusion."}
    valid = converters.convert_chexpert_plus(root, split="validation")[0]
    assert [answer(r) for r in by_task(valid, "classification")] == [
        "The following abnormalities are identified: pleural effusion."]
    assert valid[0]["image"].endswith("PNG/valid/patient64541/study1/view1_frontal.png")
    os.remove(f"{root}/chexbert_labels/report_fixed.json")
    records, summary = converters.convert_chexpert_plus(root)
    assert summary["records"] == {"report": 2} and summary["notes"]

# ----------------------------------------------------------------------------------------------------------
# Chest ImaGenome


IMAGENOME_WITH_METADATA = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
IMAGENOME_WITHOUT_METADATA = "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"


def scene_graph_object(dicom_id, name, x1, y1, x2, y2):
    return {"object_id": f"{dicom_id}_{name}", "x1": 0, "y1": 0, "x2": 0, "y2": 0, "width": 0, "height": 0,
            "bbox_name": name, "synsets": ["C0000000"], "name": name.capitalize(),
            "original_x1": x1, "original_y1": y1, "original_x2": x2, "original_y2": y2,
            "original_width": x2 - x1, "original_height": y2 - y1}  # box sizes, not the image size


def make_chest_imagenome(root, mimic):
    """Two scene graphs: one image in MIMIC's metadata (1000 x 2000; its JPG a resized copy) with a good, an
    out-of-image and a degenerate region; one image only as a 400 x 300 file. A train split of the first."""
    one, two = IMAGENOME_WITH_METADATA, IMAGENOME_WITHOUT_METADATA
    write_csv(f"{mimic}/mimic-cxr-2.0.0-metadata.csv.gz",
              ["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns"],
              [(one, "10000032", "50414267", "PA", 2000, 1000)])
    write_image(f"{mimic}/files/p10/p10000032/s50414267/{one}.jpg", size=(100, 200))
    write_image(f"{mimic}/files/p10/p10000032/s53189527/{two}.jpg", size=(400, 300))
    graphs = {one: ("50414267", [scene_graph_object(one, "right lung", 100, 200, 500, 1600),
                                 scene_graph_object(one, "left lung", 500, 200, 1001, 1600),
                                 scene_graph_object(one, "trachea", 450, 100, 450, 600)]),
              two: ("53189527", [scene_graph_object(two, "cardiac silhouette", 100, 90, 300, 240),
                                 scene_graph_object(two, "right lung", 20, 30, 200, 270)])}
    for dicom_id, (study, objects) in graphs.items():
        write_json(f"{root}/silver_dataset/scene_graph/{dicom_id}_SceneGraph.json",
                   {"image_id": dicom_id, "patient_id": "10000032", "study_id": study, "viewpoint": "PA",
                    "gender": "F", "objects": objects, "attributes": [], "relationships": []})
    write_csv(f"{root}/silver_dataset/splits/train.csv", ["dicom_id", "subject_id", "study_id"],
              [(one, "10000032", "50414267")])


def test_chest_imagenome(tmp_path):
    root, mimic = str(tmp_path / "chest-imagenome"), str(tmp_path / "mimic-cxr-jpg")
    make_chest_imagenome(root, mimic)
    one, two = IMAGENOME_WITH_METADATA, IMAGENOME_WITHOUT_METADATA
    records, summary = converters.convert_chest_imagenome(root, mimic_root=mimic, regions_per_image=0)
    check(records)
    assert summary["records"] == {"anatomical_grounding": 3}
    assert summary["skipped"] == {"box outside the image": 1, "box with x_max <= x_min or y_max <= y_min": 1}
    by_id = {r["id"]: r for r in records}
    right_lung = by_id[f"chest-imagenome_{one}_right_lung"]  # normalized by the metadata's Columns x Rows
    assert right_lung["boxes"] == [[0.1, 0.1, 0.5, 0.8]]
    assert answer(right_lung) == "The right lung is located at the coordinates [0.1, 0.1, 0.5, 0.8] on the image."
    assert question(right_lung) in [p.format(name="right lung") for p in PROMPTS["anatomical_grounding"]]
    heart = by_id[f"chest-imagenome_{two}_cardiac_silhouette"]  # no metadata row: the image file's size
    assert heart["boxes"] == [[0.25, 0.3, 0.75, 0.8]]
    one_each, summary = converters.convert_chest_imagenome(root, mimic_root=mimic)
    assert len(one_each) == 2 and summary["notes"]["regions left out (regions_per_image)"] == 1
    train, _ = converters.convert_chest_imagenome(root, split="train", mimic_root=mimic, regions_per_image=0)
    assert [r["id"] for r in train] == [f"chest-imagenome_{one}_right_lung"]

# ----------------------------------------------------------------------------------------------------------
# VinDr-CXR


VINDR_HEADER = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
VINDR_IMAGES = ("9a5094b2563a1ef3ff50dc5c7ff71345", "50a418190bc3fb1ef1633bf9678929b3")


def make_vindr_cxr(root):
    """Image 1 (1000 x 500): two readers' cardiomegaly boxes (fused into one), one aortic enlargement, one box
    past the image's right edge, and a third reader who saw nothing. Image 2: 'No finding' from all three."""
    one, two = VINDR_IMAGES
    write_csv(f"{root}/annotations/annotations_train.csv", VINDR_HEADER, [
        (one, "R8", "Cardiomegaly", 300, 250, 700, 400), (one, "R9", "Cardiomegaly", 320, 250, 720, 420),
        (one, "R9", "Aortic enlargement", 480, 100, 560, 180), (one, "R8", "Pleural thickening", 900, 10, 1004, 60),
        (one, "R10", "No finding", "", "", "", ""),
        (two, "R8", "No finding", "", "", "", ""), (two, "R9", "No finding", "", "", "", ""),
        (two, "R10", "No finding", "", "", "", "")])
    write_image(f"{root}/train/{one}.png", size=(1000, 500))
    write_image(f"{root}/train/{two}.png", size=(800, 800))


def test_vindr_cxr_fusion_single_and_all_findings(tmp_path):
    root = str(tmp_path / "vindr-cxr")
    make_vindr_cxr(root)
    one, two = VINDR_IMAGES
    records, summary = converters.convert_vindr_cxr(root, split="train")
    check(records)
    assert summary["records"] == {"abnormality_grounding": 4}
    assert summary["skipped"] == {"box outside the image": 1}  # the pleural thickening: no record for it
    assert summary["notes"]["images with no finding"] == 1
    by_id = {r["id"]: r for r in records}
    assert set(by_id) == {f"vindr-cxr_{one}_cardiomegaly", f"vindr-cxr_{one}_aortic_enlargement",
                          f"vindr-cxr_{one}_all", f"vindr-cxr_{two}_all"}
    cardiomegaly = by_id[f"vindr-cxr_{one}_cardiomegaly"]
    assert cardiomegaly["boxes"] == [[0.31, 0.5, 0.71, 0.82]]  # mean of [300,250,700,400] and [320,250,720,420]
    assert answer(cardiomegaly) == ("The cardiomegaly is located at the coordinates [0.31, 0.5, 0.71, 0.82] "
                                    "on the image.")
    assert question(cardiomegaly) in [p.format(name="cardiomegaly") for p in PROMPTS["abnormality_grounding"]]
    everything = by_id[f"vindr-cxr_{one}_all"]
    assert answer(everything) == ("There is an aortic enlargement located at the "
                                  "coordinates [0.48, 0.2, 0.56, 0.36]; a cardiomegaly located at the coordinates "
                                  "[0.31, 0.5, 0.71, 0.82].")
    assert question(everything) in PROMPTS["abnormality_grounding_all"]
    nothing = by_id[f"vindr-cxr_{two}_all"]
    assert nothing["boxes"] == [] and answer(nothing) == NO_ABNORMALITY
    records, summary = converters.convert_vindr_cxr(root, split="train", keep_no_finding=False)
    assert f"vindr-cxr_{two}_all" not in {r["id"] for r in records} and len(records) == 3
    records, summary = converters.convert_vindr_cxr(root)  # all splits: those with an annotation file
    assert len(records) == 4 and summary["notes"]["no annotation file for split test"] == 1


def test_vindr_cxr_image_sizes_file_and_kaggle_csv_without_images(tmp_path):
    one, two = VINDR_IMAGES
    kaggle = f"{tmp_path}/vinbigdata-train.csv.gz"  # the Kaggle / torchxrayvision layout, with class_id
    write_csv(kaggle, ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"],
              [(one, "Cardiomegaly", 3, "R10", 300.0, 250.0, 700.0, 400.0),
               (two, "No finding", 14, "R11", "", "", "", "")])
    sizes = f"{tmp_path}/image_resolutions_train.json"  # the authors' file: [Rows, Columns]
    write_json(sizes, {one: [1000, 2000]})
    nowhere = str(tmp_path / "nowhere")
    records, summary = converters.convert_vindr_cxr(nowhere, split="train", annotations=kaggle, image_sizes=sizes,
                                                    check_images=False)
    check(records)
    assert [r["boxes"] for r in records if r["id"].endswith("_cardiomegaly")] == [[[0.15, 0.25, 0.35, 0.4]]]
    assert len(records) == 3
    records, summary = converters.convert_vindr_cxr(nowhere, split="train", annotations=kaggle)
    assert records == [] and summary["skipped"]["image file missing"] == 2


def test_vindr_cxr_reads_dicom(tmp_path):
    import pydicom  # requirements-test.txt: a missing reference fails the test rather than skipping it
    import numpy as np
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    root = str(tmp_path / "vindr-cxr")
    image_id = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    write_csv(f"{root}/annotations/annotations_test.csv", VINDR_HEADER,
              [(image_id, "R11", "Nodule/Mass", 10, 20, 30, 40)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    pixels = np.tile(np.arange(200, dtype=np.uint16) * 20, (100, 1))  # 200 wide, 100 high, a left-right ramp
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1"  # low values bright: must come out inverted
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.PixelData = pixels.tobytes()
    os.makedirs(f"{root}/test")
    ds.save_as(f"{root}/test/{image_id}.dicom", enforce_file_format=True)
    records, _ = converters.convert_vindr_cxr(root, split="test", image_dir=str(tmp_path / "png"), max_side=100)
    check(records)
    assert records[0]["boxes"] == [[0.05, 0.2, 0.15, 0.4]]  # normalized by the DICOM's 200 x 100
    assert answer(records[0]).startswith("The nodule/mass is located")
    png = Image.open(records[0]["image"])
    assert records[0]["image"] == str(tmp_path / "png" / "test" / f"{image_id}.png") and png.size == (100, 50)
    row = np.asarray(png)[25]
    assert row[0] > 200 and row[-1] < 50  # MONOCHROME1 inverted


def test_vindr_cxr_dicom_without_pydicom_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if it were not installed
    root = str(tmp_path / "vindr-cxr")
    write_csv(f"{root}/annotations/annotations_train.csv", VINDR_HEADER, [("abc", "R1", "ILD", 1, 2, 3, 4)])
    os.makedirs(f"{root}/train")
    open(f"{root}/train/abc.dicom", "wb").close()
    with pytest.raises(RuntimeError, match="pip install pydicom"):
        converters.convert_vindr_cxr(root, split="train", image_dir=str(tmp_path / "png"))

# ----------------------------------------------------------------------------------------------------------
# MS-CXR and PadChest-GR


MS_CXR_IMAGES = ("0ad2f1ec-2c0b1e8e-5a3b6f1c-1c0c1f1e-6a0d9b5e", "1b3c2d4e-5f607182-93a4b5c6-d7e8f901-23456789")


def make_ms_cxr(root, mimic):
    """v1.1.0 CSV: a test image with a phrase drawn as two boxes (its label_text once with a double space) and
    a zero-width box; a train image with one phrase. Images in MIMIC-CXR-JPG's layout."""
    one, two = MS_CXR_IMAGES
    header = ["dicom_id", "subject_id", "study_id", "category_name", "label_text", "path", "x", "y", "w", "h",
              "image_width", "image_height", "split"]
    path_one, path_two = f"files/p15/p15298263/s50399327/{one}.jpg", f"files/p10/p10000001/s50000001/{two}.jpg"
    write_csv(f"{root}/MS_CXR_Local_Alignment_v1.1.0.csv", header, [
        (one, "15298263", "50399327", "Pneumonia", "Bilateral  pneumonia", path_one, 100, 50, 200, 150, 1000, 500,
         "test"),
        (one, "15298263", "50399327", "Pneumonia", "Bilateral pneumonia", path_one, 600, 50, 200, 150, 1000, 500,
         "test"),
        (one, "15298263", "50399327", "Edema", "Mild edema", path_one, 300, 100, 0, 100, 1000, 500, "test"),
        (two, "10000001", "50000001", "Cardiomegaly", "Enlarged heart", path_two, 10, 10, 20, 20, 100, 100, "train")])
    write_image(f"{mimic}/{path_one}")
    write_image(f"{mimic}/{path_two}")


def test_ms_cxr(tmp_path):
    root, mimic = str(tmp_path / "ms-cxr"), str(tmp_path / "mimic-cxr-jpg")
    make_ms_cxr(root, mimic)
    records, summary = converters.convert_ms_cxr(root, split="test", mimic_root=mimic)
    check(records)
    assert summary["records"] == {"phrase_grounding": 1}
    assert summary["skipped"] == {"box with x_max <= x_min or y_max <= y_min": 1,
                                  "phrase whose boxes were all dropped": 1}
    record = records[0]
    assert record["boxes"] == [[0.1, 0.1, 0.3, 0.4], [0.6, 0.1, 0.8, 0.4]]  # x, y, w, h -> corners, 2 boxes
    assert answer(record) == "This finding is located at [0.1, 0.1, 0.3, 0.4] and [0.6, 0.1, 0.8, 0.4] in the image."
    assert question(record) in [p.format(phrase="Bilateral pneumonia") for p in PROMPTS["phrase_grounding"]]
    assert len(converters.convert_ms_cxr(root, mimic_root=mimic)[0]) == 2


PADCHEST_GR_IMAGES = ("216840111366964013829543166512013338135747880_02-094-102.png",
                      "216840111366964013686042548532013181093838458_02-015-186.png")


def make_padchest_gr(root):
    """A train study with a grounded sentence, a normal sentence without boxes and a sentence with one box
    past the right edge (x_max 1.2); a validation study with one grounded sentence."""
    one, two = PADCHEST_GR_IMAGES
    write_json(f"{root}/grounded_reports_20240819.json", [
        {"StudyID": "S1", "ImageID": one, "PatientID": "P1", "findings": [
            {"sentence_en": "Cardiomegaly.", "sentence_es": "Cardiomegalia.", "abnormal": True,
             "boxes": [[0.3, 0.45, 0.8, 0.75]], "extra_boxes": [], "labels": ["cardiomegaly"], "locations": [],
             "progression": None},
            {"sentence_en": "No pleural effusion.", "sentence_es": "Sin derrame.", "abnormal": False},
            {"sentence_en": "Bilateral apical pleural thickening.", "abnormal": True,
             "boxes": [[0.1, 0.05, 0.3, 0.2], [0.7, 0.05, 1.2, 0.2]], "labels": ["apical pleural thickening"]}]},
        {"StudyID": "S2", "ImageID": two, "PatientID": "P2", "findings": [
            {"sentence_en": "Right basal opacity.", "abnormal": True, "boxes": [[0.1, 0.6, 0.4, 0.9]]}]}])
    write_csv(f"{root}/master_table.csv", ["ImageID", "StudyID", "PatientID", "split", "label", "label_group"],
              [(one, "S1", "P1", "train", "cardiomegaly", "cardiomegaly"),
               (two, "S2", "P2", "validation", "infiltrates", "opacity")])
    write_image(f"{root}/PadChest_GR/{one}")
    write_image(f"{root}/PadChest_GR/{two}")


def test_padchest_gr(tmp_path):
    root = str(tmp_path / "padchest-gr")
    make_padchest_gr(root)
    records, summary = converters.convert_padchest_gr(root, split="train")
    check(records)
    assert [r["boxes"] for r in records] == [[[0.3, 0.45, 0.8, 0.75]], [[0.1, 0.05, 0.3, 0.2]]]  # 1.2 > 1: dropped
    assert summary["skipped"] == {"sentence without a box": 1, "box outside the image": 1}
    assert question(records[0]) in [p.format(phrase="Cardiomegaly.") for p in PROMPTS["phrase_grounding"]]
    valid, _ = converters.convert_padchest_gr(root, split="valid")
    assert [r["id"] for r in valid] == [f"padchest-gr_{PADCHEST_GR_IMAGES[1][:-4]}_0"]
    assert valid[0]["source"] == "padchest-gr"

# ----------------------------------------------------------------------------------------------------------
# command line


def test_main_writes_jsonl_and_prints_summary(tmp_path, capsys):
    root = str(tmp_path / "vindr-cxr")
    make_vindr_cxr(root)
    out = str(tmp_path / "out" / "vindr_train.jsonl")
    converters.main(["vindr-cxr", "--root", root, "--split", "train", "--out", out])
    records = check(load_records(out))
    assert len(records) == 4 and all(os.path.isabs(r["image"]) for r in records)
    printed = capsys.readouterr().out
    assert "abnormality_grounding" in printed and "box outside the image" in printed
    with pytest.raises(SystemExit):  # an option of another dataset is an error, not silently ignored
        converters.main(["vindr-cxr", "--root", root, "--out", out, "--regions-per-image", "2"])
