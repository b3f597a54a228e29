"""scorers.py: the model-based metrics on tiny random stand-ins saved in the layout of a --metric_weights folder
(what real weights go through), RadCliQ's arithmetic with stand-in scorers, GREEN's parser and judge, and that
every metric model goes to this rank's GPU."""
import math
import os
import sys
import types

import numpy as np
import pytest
import torch

import evaluate
import rewards
import scorers
from records import CHEXPERT_LABELS
from rewards import radcliq_v1, score

WORDS = ("the heart size is normal no pleural effusion or pneumothorax moderate cardiomegaly small left right "
         "lower lobe consolidation mild pulmonary edema lungs are clear").split()
CANDIDATES = ["The heart size is normal.", "Moderate cardiomegaly. Small left pleural effusion.", "heart",
              "lungs are clear", "mild pulmonary edema zzz"]
REFERENCES = ["No pleural effusion or pneumothorax.", "Moderate cardiomegaly.", "The heart size is normal.",
              "lungs are clear", "Mild edema."]


def tiny_encoder(path, kind, layers=5):
    """A tiny random BERT (WordPiece) or RoBERTa (byte-level BPE) saved like a hub checkpoint, 5 layers deep as
    BERTScore reads layer 5, with a bert-score baseline file."""
    from transformers import BertConfig, BertModel, BertTokenizer, RobertaConfig, RobertaModel, RobertaTokenizer
    path.mkdir()
    if kind == "bert":
        vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + sorted(set(WORDS))
                 + [c for c in "abcdefghijklmnopqrstuvwxyz"] + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"])
        (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer, config_class, model_class = BertTokenizer(vocab=str(path / "vocab.txt")), BertConfig, BertModel
    else:
        from tokenizers import ByteLevelBPETokenizer
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(CANDIDATES + REFERENCES, vocab_size=300, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        bpe.save_model(str(path))
        tokenizer = RobertaTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
        config_class, model_class = RobertaConfig, RobertaModel
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    # heads 64 wide as in BERT, since a CheXbert checkpoint carries no config and its head count is hidden / 64
    config = config_class(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=layers, num_attention_heads=1,
                          intermediate_size=64, max_position_embeddings=130, initializer_range=0.5,
                          pad_token_id=tokenizer.pad_token_id)
    model_class(config).save_pretrained(path)
    (path / "baseline.tsv").write_text("LAYER,P,R,F\n0,0.1,0.1,0.1\n1,0.2,0.2,0.3\n2,0.25,0.26,0.27\n3,0.3,0.3,0.3\n")
    return str(path)


@pytest.fixture(scope="module")
def metric_weights(tmp_path_factory):
    """A --metric_weights folder of stand-ins: both BERTScore encoders, and a CheXbert checkpoint (with its
    tokenizer) whose heads ignore the text: Cardiomegaly says positive, Edema uncertain, No Finding positive, the
    others negative."""
    from transformers import BertModel
    folder = tmp_path_factory.mktemp("metric_weights")
    tiny_encoder(folder / "distilroberta-base", "roberta")
    bert = tiny_encoder(folder / "distilbert-base-uncased", "bert")
    tiny_encoder(folder / "bert-base-uncased", "bert")
    state = {f"module.bert.{k}": v for k, v in BertModel.from_pretrained(bert).state_dict().items()}
    for i, name in enumerate(CHEXPERT_LABELS[1:] + CHEXPERT_LABELS[:1]):  # CheXbert's order: No Finding last
        wanted = {"Cardiomegaly": 1, "Edema": 3, "No Finding": 1}.get(name, 2)
        n_classes = 2 if name == "No Finding" else 4
        state[f"module.linear_heads.{i}.weight"] = torch.zeros(n_classes, 64)
        state[f"module.linear_heads.{i}.bias"] = torch.nn.functional.one_hot(torch.tensor(wanted), n_classes).float()
    torch.save({"model_state_dict": state}, folder / "chexbert.pth")
    return str(folder)


# ----------------------------------------------------------------------------------------------------------
# BERTScore and CheXbert

@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_bertscore_equals_the_bert_score_package(tmp_path, kind):
    import bert_score  # requirements-test.txt: a missing reference fails the test rather than skipping it
    path = tiny_encoder(tmp_path / kind, kind, layers=3)
    ours = scorers.BertScorer(path, 2, path + "/baseline.tsv", device="cpu")(CANDIDATES, REFERENCES)
    _, _, theirs = bert_score.score(CANDIDATES, REFERENCES, model_type=path, num_layers=2, lang="en", device="cpu",
                                    rescale_with_baseline=True, baseline_path=path + "/baseline.tsv")
    assert ours == pytest.approx(theirs.tolist(), abs=1e-5)
    assert scorers.BertScorer(path, 2, path + "/baseline.tsv", device="cpu").baseline == 0.27  # bert-score's file


def test_bertscore_reward_reads_its_encoder_from_the_weights_folder(metric_weights):
    values, parts = score("report", CANDIDATES + [""], REFERENCES + ["Mild edema."], reward="bertscore",
                          metric_weights=metric_weights)
    baseline = scorers.BERTSCORE_LAYER_BASELINE["distilbert-base-uncased"][1]
    assert values[3] == pytest.approx(1.0) and values[-1] == pytest.approx(-baseline / (1 - baseline))  # same; empty
    assert values == parts["bertscore"] and len(values) == 6


def test_chexbert_checkpoint_loads_into_a_transformers_bert(metric_weights):
    from transformers import BertModel
    bert = BertModel.from_pretrained(os.path.join(metric_weights, "bert-base-uncased"))
    embedder = scorers.chexbert_embedder(metric_weights)
    batch = embedder.tokenizer(["Moderate cardiomegaly."], return_tensors="pt")
    state = torch.load(os.path.join(metric_weights, "chexbert.pth"), weights_only=True)["model_state_dict"]
    bert.load_state_dict({k[len("module.bert."):]: v for k, v in state.items() if k.startswith("module.bert.")})
    with torch.no_grad():
        expected = bert.eval()(**batch).last_hidden_state[:, 0]
    assert torch.allclose(embedder(["Moderate cardiomegaly."]), expected, atol=1e-6)
    assert embedder.similarity(["lungs are clear"], ["lungs are clear"]) == [pytest.approx(1.0)]


def test_chexbert_labels_read_the_heads_in_chexberts_order(metric_weights):
    labels = scorers.chexbert_labels(["the heart is normal .", "mild edema"], metric_weights)
    positive = {CHEXPERT_LABELS[j] for j in np.flatnonzero(labels[0])}
    assert positive == {"Cardiomegaly", "Edema", "No Finding"} and (labels[0] == labels[1]).all()


def test_evaluation_reports_bertscore_and_chexbert_f1_from_the_folder(metric_weights):
    records = [{"id": i, "task": "report", "conversations": [{"from": "human", "value": "Write a report."},
                                                              {"from": "gpt", "value": text}]}
               for i, text in enumerate(["mild cardiomegaly . small left pleural effusion .", "the lungs are clear ."])]
    report = evaluate.score(records, [r["conversations"][1]["value"] for r in records], n_boot=20,
                            metric_weights=metric_weights)["report"]
    assert report["bertscore"]["value"] == pytest.approx(1.0, abs=1e-5)  # identical texts, baseline-rescaled
    assert report["chexbert_f1_micro"]["value"] == pytest.approx(1.0) and report["chexbert_f1_macro_5"]["value"] == 1.0
    assert "radgraph" in report["radgraph_f1"]["unavailable"] and "unavailable" in report["radcliq_v1"]
    assert "GREEN" in report["green"]["unavailable"]


# ----------------------------------------------------------------------------------------------------------
# RadCliQ-v1 and RadGraph

def test_radcliq_pipeline_with_stand_in_scorers(monkeypatch):
    # the batching, floors and arithmetic of radcliq_rewards, with the three models replaced by constants
    monkeypatch.setattr(scorers, "radgraph_scorer", lambda folder: lambda p, r: [0.25] * len(p))
    monkeypatch.setattr(scorers, "bert_scorer", lambda folder: lambda p, r: [0.5] * len(p))
    chexbert = type("StandIn", (), {"similarity": lambda self, p, r: [0.6] * len(p)})()
    monkeypatch.setattr(scorers, "chexbert_embedder", lambda folder: chexbert)
    report = "Moderate cardiomegaly. No pleural effusion."
    values, parts = score("report", [report, "tiny", report.upper()], [report, report, report], reward="radcliq")
    expected = -radcliq_v1(0.25, 0.5, 0.6, 1.0)  # BLEU-4 of identical (lower-cased) texts is 1
    assert values == [pytest.approx(expected), -3.0, pytest.approx(expected)]
    assert parts["bleu4"][0] == 1.0 and math.isnan(parts["bleu4"][1]) and parts["radcliq"] == values
    monkeypatch.setattr(scorers, "radgraph_scorer", lambda folder: lambda p, r: 1 / 0)
    with pytest.warns(UserWarning, match="RadCliQ scoring failed"):
        assert score("report", [report], [report], reward="radcliq")[0] == [-3.0]  # a failed batch: the floor
    with pytest.raises(RuntimeError, match="RadCliQ scoring failed"):  # evaluation: no number for a failure
        rewards.radcliq_rewards([report], [report], floor_on_failure=False)


def test_radgraph_f1_of_annotations():
    def annotation(*entities):
        return {"entities": {str(i): {"tokens": tokens, "label": label, "relations": relations}
                             for i, (tokens, label, relations) in enumerate(entities)}}
    reference = annotation(("effusion", "OBS-DP", []), ("left", "ANAT-DP", [["located_at", "0"]]))
    prediction = annotation(("effusion", "OBS-DP", []), ("right", "ANAT-DP", [["located_at", "0"]]))
    # entities: 1 of 2 match (F1 0.5); relations: (left->effusion) vs (right->effusion), none match
    assert scorers.RadGraphScorer.radcliq_f1(prediction, reference) == 0.25
    assert scorers.RadGraphScorer.radcliq_f1(reference, reference) == 1.0


def test_radcliq_floors_and_missing_weights_name_the_file(tmp_path):
    values, parts = score("report", ["short", "", "A long enough report."], ["Normal chest.", "x", "tiny"],
                          reward="radcliq")
    assert values == [-3.0, -3.0, -3.0] and all(math.isnan(v) for v in parts["bertscore"])
    with pytest.raises(scorers.MissingModelError, match="--metric_weights"):
        score("report", ["Moderate cardiomegaly."], ["Small left pleural effusion."], reward="radcliq")
    with pytest.raises(scorers.MissingModelError, match=f"{tmp_path}/distilbert-base-uncased"):
        score("report", ["Moderate cardiomegaly."], ["Small left pleural effusion."], reward="bertscore",
              metric_weights=str(tmp_path))


# ----------------------------------------------------------------------------------------------------------
# GREEN

def test_green_score_parses_the_judges_answer():
    judgement = ("[Explanation]:\nThe candidate misses the effusion.\n\n[Clinically Significant Errors]:\n"
                 "(a) False report of a finding in the candidate: 0.\n"
                 "(b) Missing a finding present in the reference: 1. Left pleural effusion\n"
                 "(c) Misidentification of a finding's anatomic location/position: 0.\n"
                 "(d) Misassessment of the severity of a finding: 1. severity of cardiomegaly\n\n"
                 "[Clinically Insignificant Errors]:\n(a) False report of a finding in the candidate: 2.\n\n"
                 "[Matched Findings]:\n2. Cardiomegaly; no pneumothorax\n")
    assert scorers.green_score(judgement) == pytest.approx(2 / (2 + 2))  # insignificant errors do not count
    assert scorers.green_score(judgement.replace("[Matched Findings]:\n2.", "[Matched Findings]:\n0.")) == 0.0
    assert scorers.green_score("garbage") == 0.0


def test_green_runs_a_local_causal_lm_judge(tmp_path, monkeypatch):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from model import build_tokenizer
    judge = tmp_path / "GREEN-radllama2-7b"
    tokenizer = build_tokenizer([scorers.GREEN_PROMPT] * 4, vocab_size=400)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(judge))
    tokenizer.save_pretrained(str(judge))
    loaded = AutoTokenizer.from_pretrained(str(judge))
    loaded.chat_template = scorers.GREEN_CHAT_TEMPLATE
    prompt = loaded.apply_chat_template([{"from": "human", "value": scorers.GREEN_PROMPT.format(reference="a b",
                                                                                               candidate="c d")},
                                         {"from": "gpt", "value": ""}], tokenize=False, add_generation_prompt=True)
    scores = scorers.green_scores(["c d", "c"], ["a b", "a"], str(tmp_path),
                                  max_length=len(loaded(prompt)["input_ids"]) + 8)
    assert scores == [0.0, 0.0]  # a random judge names no matched finding
    # the same judge made to answer as GREEN does: its judgement is parsed into a score
    judgement = ("[Explanation]:\nOne miss.\n\n[Clinically Significant Errors]:\n(b) Missing a finding present in the "
                 "reference: 1. effusion\n\n[Matched Findings]:\n3. a; b; c\n")
    answer = loaded(judgement, add_special_tokens=False, return_tensors="pt")["input_ids"]
    monkeypatch.setattr(LlamaForCausalLM, "generate", lambda self, input_ids, **kwargs: torch.cat(
        [input_ids, answer.expand(len(input_ids), -1)], 1))
    assert scorers.green_scores(["c d", "c"], ["a b", "a"], str(tmp_path)) == [0.75, 0.75]  # 3 / (3 + 1)


# ----------------------------------------------------------------------------------------------------------
# placement

def test_metric_models_go_to_this_ranks_gpu(tmp_path, monkeypatch):
    """Every rank of an 8-GPU GRPO run scores its own rollouts: its metric models belong on cuda:LOCAL_RANK,
    RadGraph (which takes a GPU index) included, not all on GPU 0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert scorers._default_device() == "cuda:3"
    seen = {}
    fake = types.ModuleType("radgraph")
    fake.RadGraph = lambda **kwargs: seen.update(kwargs)
    fake_rewards = types.ModuleType("radgraph.rewards")
    fake_rewards.compute_reward = None
    monkeypatch.setitem(sys.modules, "radgraph", fake)
    monkeypatch.setitem(sys.modules, "radgraph.rewards", fake_rewards)
    (tmp_path / "radgraph" / "radgraph-xl").mkdir(parents=True)
    scorers.RadGraphScorer(str(tmp_path / "radgraph"))
    assert seen["cuda"] == 3
    scorers.RadGraphScorer(str(tmp_path / "radgraph"), device="cpu")
    assert seen["cuda"] == -1
