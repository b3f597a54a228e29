"""runs/paper.sh, the paper's pipeline, end to end on this CPU: every dataset converted from fake trees in its real
layout (tests/test_converters.py's builders), the tiny Qwen3-VL, 2 gloo ranks, a step or two per stage; then run again,
which must continue, not redo. Run: python -m pytest tests/test_paper_run.py"""
import hashlib
import json
import os
import subprocess
import sys

from checkpoints import latest_checkpoint
from records import load_records
from test_converters import (IMAGENOME_WITHOUT_METADATA, PADCHEST_GR_IMAGES, VINDR_HEADER, VINDR_IMAGES,
                             make_chest_imagenome, make_chexpert_plus, make_mimic_cxr, make_ms_cxr, make_padchest_gr,
                             make_vindr_cxr, write_csv, write_image)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the rule-based teacher, and each stage cut to a step or two of tiny batches
TINY_RUN = {"NPROC": "2", "TEACHER": "rule",
            "EXTRA_SFT": "--max_tokens=1024 --rows_per_step=1 --epochs=10 --max_steps=2 --num_workers=0 "
                         "--grad_checkpointing=False",
            "EXTRA_GRPO": "--report_reward=label_f1 --prompts_per_step=2 --mini_batch=2 --micro_batch=4 "
                          "--generate_batch=0 --group_size=2 --max_new_tokens=8 --max_steps=1 "
                          "--grad_checkpointing=False",
            "EXTRA_EVAL": "--max_new_tokens=8 --bootstrap=10"}
TRAIN_FILES = ["mimic_train", "chexpert_plus_train", "imagenome_train", "vindr_train", "ms_cxr_train",
               "padchest_gr_train"]
GROUNDING_TEST_FILES = ["imagenome_test", "vindr_test", "ms_cxr_test", "padchest_gr_test"]
MODELS = ["sft", "sft_thinking", "grpo_report", "grpo_grounding", "grpo_report_thinking", "grpo_grounding_thinking"]
EVALUATIONS = {"eval_sft_report": "report", "eval_sft_grounding": "grounding", "eval_grpo_report": "report",
               "eval_grpo_grounding": "grounding", "eval_grpo_thinking_report": "report",
               "eval_grpo_thinking_grounding": "grounding"}


def fake_datasets(raw):
    """The dataset roots of runs/paper.sh, each a fake tree in the real layout, Chest ImaGenome and MS-CXR reading their
    images from the MIMIC-CXR-JPG tree as the real ones do, plus the test splits those trees leave out."""
    roots = {"MIMIC_ROOT": f"{raw}/mimic-cxr-jpg", "CHEXPERT_PLUS_ROOT": f"{raw}/chexpert-plus",
             "IMAGENOME_ROOT": f"{raw}/chest-imagenome", "VINDR_ROOT": f"{raw}/vindr-cxr",
             "MS_CXR_ROOT": f"{raw}/ms-cxr", "PADCHEST_GR_ROOT": f"{raw}/padchest-gr"}
    mimic = roots["MIMIC_ROOT"]
    make_chest_imagenome(roots["IMAGENOME_ROOT"], mimic)  # first: MIMIC-CXR's metadata, written next, covers its images
    make_mimic_cxr(mimic)
    make_chexpert_plus(roots["CHEXPERT_PLUS_ROOT"])
    make_vindr_cxr(roots["VINDR_ROOT"])
    make_ms_cxr(roots["MS_CXR_ROOT"], mimic)
    make_padchest_gr(roots["PADCHEST_GR_ROOT"])
    write_csv(f"{roots['IMAGENOME_ROOT']}/silver_dataset/splits/test.csv", ["dicom_id", "subject_id", "study_id"],
              [(IMAGENOME_WITHOUT_METADATA, "10000032", "53189527")])
    vindr_image = VINDR_IMAGES[0]
    write_csv(f"{roots['VINDR_ROOT']}/annotations/annotations_test.csv", VINDR_HEADER,
              [(vindr_image, "R8", "Cardiomegaly", 300, 250, 700, 400),
               (vindr_image, "R9", "Aortic enlargement", 480, 100, 560, 180)])
    write_image(f"{roots['VINDR_ROOT']}/test/{vindr_image}.png", size=(1000, 500))
    one, two = PADCHEST_GR_IMAGES  # the second study moves from the validation split to the test split
    write_csv(f"{roots['PADCHEST_GR_ROOT']}/master_table.csv", ["ImageID", "StudyID", "PatientID", "split"],
              [(one, "S1", "P1", "train"), (two, "S2", "P2", "test")])
    return roots


def run_paper(env):
    proc = subprocess.run(["bash", os.path.join(ROOT, "runs", "paper.sh")], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc.stdout


def contents(folder):
    """{path: sha1 of the file} of every file under folder."""
    return {os.path.join(d, name): hashlib.sha1(open(os.path.join(d, name), "rb").read()).hexdigest()
            for d, _, names in os.walk(folder) for name in names}


def test_paper_pipeline_connects_every_stage_and_a_second_run_changes_nothing(tiny_checkpoint, tmp_path):
    """Guards issue #27: the real path's commands did not connect. SFT read radvlm_train.jsonl, which no command wrote;
    GRPO read mimic_train.jsonl where the conversion wrote data/mimic_train.jsonl; the evaluation read mimic_test.jsonl,
    which nothing converted; and nothing ran the stages in order. Also guards a re-run that redoes finished work: a
    conversion, the teacher's traces, a training run or an evaluation done again, or a finished SFT run that is
    resumed (as an interrupted one is) writing its checkpoint again."""
    data, out = tmp_path / "data", tmp_path / "out"
    env = {**os.environ, **fake_datasets(tmp_path / "raw"), **TINY_RUN, "BASE_MODEL": tiny_checkpoint,
           "DATA": str(data), "OUT": str(out), "METRIC_WEIGHTS": str(tmp_path / "no_weights"), "OMP_NUM_THREADS": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    run_paper(env)

    ids = lambda name: {r["id"] for r in load_records(str(data / f"{name}.jsonl"))}  # noqa: E731
    assert all(ids(name) for name in TRAIN_FILES + GROUNDING_TEST_FILES + ["mimic_test"])
    assert ids("radvlm_train") == set().union(*map(ids, TRAIN_FILES))
    assert ids("grounding_test") == set().union(*map(ids, GROUNDING_TEST_FILES))
    traces = load_records(str(out / "coldstart" / "coldstart.jsonl"))
    assert any(record["conversations"][-1]["value"].startswith("<think>") for record in traces)
    for model in MODELS:
        assert latest_checkpoint(str(out / model)), model
    for evaluation, task in EVALUATIONS.items():
        results = json.load(open(out / evaluation / "results.json"))
        assert results[task]["n"] if task == "report" else set(results[task]) >= {
            "anatomical/chest-imagenome", "abnormality/vindr-cxr", "phrase/ms-cxr", "phrase/padchest-gr"}, evaluation
    assert "Grounding (Table 2)" in open(out / "tables.md").read()

    before = contents(tmp_path)
    saved = {path: os.stat(path).st_mtime_ns for path in before if f"{os.sep}step_" in path}
    os.remove(out / "sft_thinking" / "finished")  # as if it had been cut short after its last checkpoint
    stdout = run_paper(env)
    assert contents(tmp_path) == before
    assert saved == {path: os.stat(path).st_mtime_ns for path in saved}  # no checkpoint written again
    assert stdout.count("exists: kept") == 11 + 3 + 1 + len(MODELS) - 1 + len(EVALUATIONS)  # the rest was kept
    assert "resumed from" in stdout
