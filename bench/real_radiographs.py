"""
Real radiographs through the training path: every PNG/JPG/DICOM under a folder goes through
data.tokenize_sample at the paper's SFT pixel budget (max 262,144 pixels = 512 x 512).

    python bench/real_radiographs.py DIR     # DIR: your radiographs, any depth; DICOM needs the optional pydicom
"""
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import tokenize_sample  # noqa: E402
from model import build_tiny  # noqa: E402
from records import make_record  # noqa: E402

_, processor = build_tiny(min_pixels=1024, max_pixels=262144)
paths = sorted(p for p in glob.glob(os.path.join(sys.argv[1], "**", "*"), recursive=True)
               if p.lower().endswith((".png", ".jpg", ".jpeg", ".dcm", ".dicom")))
print("| file | tokens | image grid (t, h, w) | visual tokens |")
print("|---|---|---|---|")
for path in paths:
    record = make_record(os.path.basename(path), path, "Write a radiology report for this Chest X-ray.",
                         "No acute cardiopulmonary process.", "report")
    sample = tokenize_sample(record, processor)
    t, h, w = sample["image_grid_thw"][0].tolist()
    print(f"| {os.path.relpath(path, sys.argv[1])} | {len(sample['input_ids'])} | {t} x {h} x {w} | {t * h * w // 4} |")
