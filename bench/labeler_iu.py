"""
Measure rewards.extract_labels against human labels on real reports: the Indiana University chest X-ray
collection (Demner-Fushman et al. 2016, Open-i; CC BY-NC-ND 4.0), whose ~3,900 reports carry MeSH terms
assigned by human annotators (<MeSH><major>). Nothing of it is copied into this repository: get the
archive that torchxrayvision ships and point this script at it.

    pip download torchxrayvision==1.5.7 --no-deps -d /tmp/txrv && unzip -q -o /tmp/txrv/*.whl -d /tmp/txrv
    python bench/labeler_iu.py /tmp/txrv/torchxrayvision/data/NLMCXR_reports.tgz [--errors Cardiomegaly]

The labeler reads FINDINGS + IMPRESSION. A class counts as predicted when extract_labels gives it 1 or -1
(uncertain counts as positive, as in the paper; the last three columns count it as negative) and as true when
a MeSH major term maps to it (MESH_TO_CHEXPERT below). The MeSH terms of this collection carry no negation
and no uncertainty, so what is scored is the positive mentions. The mapping follows CheXpert's own class
definitions: scarring and interstitial markings are lung opacities, congestion and heart failure are edema,
granulomas are not lesions, a blunted costophrenic angle is no label. "No Finding" is true when no MeSH term
maps to one of the 12 pathologies (CheXpert's definition); the extra row scores the same prediction against
MeSH "normal", which also rules out everything CheXpert does not label (degenerative spine, granulomas,
emphysema, ...). Reports indexed "No Indexing" are skipped. Averages are over the 13 findings.
"""

import argparse
import os
import sys
import tarfile
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rewards import OBSERVATIONS, PATHOLOGIES, extract_labels  # noqa: E402

# MeSH main heading -> CheXpert observation; a tuple adds qualifiers, one of which must appear in the term
MESH_TO_CHEXPERT = {
    "Cardiomegaly": "Cardiomegaly",
    "Cardiac Shadow": ("Cardiomegaly", "enlarged"),
    "Heart": ("Cardiomegaly", "enlarged"),
    "Mediastinum": ("Enlarged Cardiomediastinum", "enlarged", "widened", "prominent"),
    "Opacity": "Lung Opacity",
    "Airspace Disease": "Lung Opacity",
    "Infiltrate": "Lung Opacity",
    "Density": "Lung Opacity",
    "Cicatrix": ("Lung Opacity", "lung"),
    "Markings": ("Lung Opacity", "interstitial"),
    "Lung Diseases, Interstitial": "Lung Opacity",
    "Nodule": "Lung Lesion",
    "Mass": "Lung Lesion",
    "Pulmonary Edema": "Edema",
    "Pulmonary Congestion": "Edema",
    "Heart Failure": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Pulmonary Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Hydropneumothorax": ("Pneumothorax", "Pleural Effusion"),
    "Hemopneumothorax": ("Pneumothorax", "Pleural Effusion"),
    "Pleural Effusion": "Pleural Effusion",
    "Hemothorax": "Pleural Effusion",
    "Thickening": ("Pleural Other", "pleura"),
    "Pleura": ("Pleural Other", "thickening"),
    "Fractures, Bone": "Fracture",
    "Catheters, Indwelling": "Support Devices",
    "Implanted Medical Device": "Support Devices",
    "Tube, Inserted": "Support Devices",
    "Medical Device": "Support Devices",
    "Stents": "Support Devices",
}
MESH_NORMAL = "No Finding (MeSH normal)"  # the labeler's "No Finding" scored against MeSH "normal"


def mesh_observations(term):
    heading, *qualifiers = [part.strip() for part in term.split("/")]
    target = MESH_TO_CHEXPERT.get(heading)
    if isinstance(target, str):
        return {target}
    if target is None:
        return set()
    names = {t for t in target if t in OBSERVATIONS}
    needed = [t for t in target if t not in OBSERVATIONS]
    return names if not needed or any(q.lower() in needed for q in qualifiers) else set()


def read_reports(path):
    """[(report id, FINDINGS + IMPRESSION text, set of observations from MeSH major terms)] from the tgz."""
    reports = []
    with tarfile.open(path) as archive:
        for member in archive:
            if not member.name.endswith(".xml"):
                continue
            root = ET.parse(archive.extractfile(member)).getroot()
            sections = {a.get("Label"): (a.text or "") for a in root.iter("AbstractText")}
            text = " ".join(sections.get(k, "").strip() for k in ("FINDINGS", "IMPRESSION")).strip()
            terms = [m.text or "" for m in root.iter("major")]
            if not text or "No Indexing" in terms:
                continue
            labels = set().union(*(mesh_observations(t) for t in terms)) if terms else set()
            if not labels & set(PATHOLOGIES):
                labels.add("No Finding")
            if "normal" in terms:
                labels.add(MESH_NORMAL)
            reports.append((os.path.basename(member.name), text, labels))
    return reports


def prf(tp, fp, fn):
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return precision, recall, (2 * tp / (2 * tp + fp + fn) if tp else 0.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", help="NLMCXR_reports.tgz (Open-i XML reports)")
    parser.add_argument("--errors", help="print the reports this observation is wrong on (uncertain = positive)")
    args = parser.parse_args()
    reports = read_reports(args.archive)
    # [true positives, false positives, false negatives] per observation, counting uncertain (-1) as positive
    # (the paper's convention) and as negative
    classes = OBSERVATIONS + (MESH_NORMAL,)
    counts = {rule: {o: [0, 0, 0] for o in classes} for rule in ("uncertain positive", "uncertain negative")}
    for rid, text, gold in reports:
        labels = extract_labels(text)
        for rule, positive in (("uncertain positive", (1, -1)), ("uncertain negative", (1,))):
            predicted = {o for o, v in labels.items() if v in positive}
            predicted |= {MESH_NORMAL} if "No Finding" in predicted else set()
            for o in predicted | gold:
                counts[rule][o][(o not in gold) + 2 * (o not in predicted)] += 1
        if args.errors and (args.errors in gold) != bool(labels.get(args.errors)):
            print(f"{'FN' if args.errors in gold else 'FP'} {rid} {labels.get(args.errors)}: {text}")
    print(f"{len(reports)} Indiana University reports (FINDINGS + IMPRESSION), MeSH major terms as labels\n")
    print("| observation | support | precision | recall | F1 | precision (-1 as 0) | recall (-1 as 0) | F1 (-1 as 0) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [o for o in classes if counts["uncertain positive"][o][0] + counts["uncertain positive"][o][2]]
    averaged = [o for o in rows if o in OBSERVATIONS[1:]]  # the findings, not the two "No Finding" rows
    for o in rows:
        tp, fp, fn = counts["uncertain positive"][o]
        cells = [f"{x:.2f}" for rule in counts for x in prf(*counts[rule][o])]
        print(f"| {o} | {tp + fn} | " + " | ".join(cells) + " |")
    totals = {rule: [sum(counts[rule][o][k] for o in averaged) for k in range(3)] for rule in counts}
    cells = [f"{x:.2f}" for rule in counts for x in prf(*totals[rule])]
    support = totals["uncertain positive"][0] + totals["uncertain positive"][2]
    print(f"| micro average | {support} | " + " | ".join(cells) + " |")
    macro = [sum(prf(*counts[rule][o])[2] for o in averaged) / len(averaged) for rule in counts]
    print(f"| macro average | | | | {macro[0]:.2f} | | | {macro[1]:.2f} |")


if __name__ == "__main__":
    main()
