"""
scorers.py: the model-based report metrics (BERTScore, CheXbert, RadGraph F1, GREEN), each loaded once from local
weights. They feed the paper's report reward (-RadCliQ-v1, rewards.radcliq_rewards), its Table 3 ablations and the
evaluation's columns. Nothing is downloaded: every weight comes from one folder, passed as --metric_weights=FOLDER
to grpo.py and evaluate.py, laid out as WEIGHTS below (the names are the models' hub names):

    FOLDER/distilroberta-base/        BERTScore inside RadCliQ-v1 (layer 5, baseline-rescaled)
    FOLDER/distilbert-base-uncased/   the BERTScore reward of the paper's Table 3 (layer 5, baseline-rescaled)
    FOLDER/chexbert.pth               CheXbert (StanfordAIMI's checkpoint): RadCliQ's report embedding, CheXbert F1
    FOLDER/bert-base-uncased/         CheXbert's tokenizer
    FOLDER/radgraph/radgraph-xl/      RadGraph-XL, as the radgraph package unpacks it (pip install radgraph==0.1.18)
    FOLDER/GREEN-radllama2-7b/        the GREEN judge (evaluation only)

A metric whose weights are missing raises MissingModelError naming the file it looked for; evaluate.py reports the
metric as unavailable (never as 0). torch and transformers are imported when a scorer is first built, so that
`import rewards` stays free of them. Models go to this rank's GPU (cuda:LOCAL_RANK) when there is one.
"""

import os
import re
import textwrap

from records import CHEXPERT_LABELS

WEIGHTS = {"distilroberta-base": "the encoder of RadCliQ-v1's BERTScore",
           "distilbert-base-uncased": "the encoder of the BERTScore reward", "chexbert.pth": "CheXbert's checkpoint",
           "bert-base-uncased": "CheXbert's tokenizer", "radgraph": "the radgraph package's model_cache_dir, holding "
           "radgraph-xl/", "GREEN-radllama2-7b": "the GREEN judge"}
# bert-score's rescale baselines (F column of rescale_baseline/en/<model>.tsv, row = layer) of the paper's two
# BERTScore encoders, both at bert-score's default layer 5
BERTSCORE_LAYER_BASELINE = {"distilroberta-base": (5, 0.8473319), "distilbert-base-uncased": (5, 0.66620487)}


class MissingModelError(RuntimeError):
    """A model-based reward was asked for without the local weights (or package) it needs."""


def _default_device():
    """This rank's GPU (torchrun's LOCAL_RANK), else the CPU: every rank of a GRPO run scores its own rollouts."""
    import torch
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


class BertScorer:
    """BERTScore F1 (Zhang et al. 2020) on a local transformers encoder, computed as the bert-score package
    does with idf=False: hidden states of layer `num_layers`, each token matched to its most similar token
    of the other text (cosine, special tokens included as match targets), precision and recall averaged
    over the non-special tokens, F1 rescaled as (F - baseline) / (1 - baseline)."""

    def __init__(self, model_path, num_layers, baseline=None, device=None, batch_size=64):
        import torch
        from transformers import AutoModel, AutoTokenizer, GPT2Tokenizer, RobertaTokenizer
        self.torch, self.device = torch, device or _default_device()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModel.from_pretrained(model_path).eval().to(self.device)
        self.num_layers, self.batch_size = num_layers, batch_size
        if isinstance(baseline, str):  # a bert-score baseline file: columns LAYER,P,R,F, one row per layer
            with open(baseline) as f:
                baseline = float(f.read().split()[1 + num_layers].split(",")[3])
        self.baseline = baseline
        # like bert-score, byte-level BPE tokenizers get a leading space so the first word is encoded as the rest
        byte_level = isinstance(self.tokenizer, (GPT2Tokenizer, RobertaTokenizer))
        self.encode_kwargs = {"add_prefix_space": True} if byte_level else {}
        self.special_ids = {self.tokenizer.cls_token_id, self.tokenizer.sep_token_id}
        # bert-score truncates at the tokenizer's model_max_length; some tokenizers leave that unset (1e30)
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)

    def _token_ids(self, text):
        kwargs = self.encode_kwargs if text.strip() else {}  # an empty text is just the special tokens
        return self.tokenizer.encode(text.strip(), add_special_tokens=True, truncation=True,
                                     max_length=self.max_length, **kwargs)

    def _embed(self, texts):
        """{text: (unit-norm token embeddings [L, D], token weights [L])} for distinct texts, batched."""
        torch, out = self.torch, {}
        for i in range(0, len(texts), self.batch_size):
            batch = texts[i:i + self.batch_size]
            ids = [self._token_ids(t) for t in batch]
            input_ids = torch.full((len(ids), max(map(len, ids))), self.tokenizer.pad_token_id)
            mask = torch.zeros_like(input_ids)
            for row, token_ids in enumerate(ids):
                input_ids[row, :len(token_ids)] = torch.tensor(token_ids)
                mask[row, :len(token_ids)] = 1
            with torch.no_grad():
                hidden = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                    output_hidden_states=True).hidden_states[self.num_layers].float().cpu()
            for row, (text, token_ids) in enumerate(zip(batch, ids)):
                emb = hidden[row, :len(token_ids)]
                weights = torch.tensor([float(t not in self.special_ids) for t in token_ids])
                out[text] = (emb / emb.norm(dim=-1, keepdim=True), weights)
        return out

    def __call__(self, candidates, references):
        embedded = self._embed(sorted(set(candidates) | set(references)))
        scores = []
        for candidate, reference in zip(candidates, references):
            (c, wc), (r, wr) = embedded[candidate], embedded[reference]
            f1 = 0.0  # bert-score's value for an empty text
            if wc.sum() > 0 and wr.sum() > 0:
                similarity = c @ r.T
                precision = float((similarity.max(dim=1).values * wc).sum() / wc.sum())
                recall = float((similarity.max(dim=0).values * wr).sum() / wr.sum())
                f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            scores.append(f1 if self.baseline is None else (f1 - self.baseline) / (1 - self.baseline))
        return scores


class CheXbertEmbedder:
    """[CLS] embedding of CheXbert (Smit et al. 2020): its checkpoint (chexbert.pth: a DataParallel state
    dict of a BERT encoder plus 14 linear heads) loaded into a transformers BertModel; sizes are read off
    the weights (bert-base-uncased for the real one)."""

    def __init__(self, checkpoint, tokenizer_path, device=None):
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel
        self.torch, self.device = torch, device or _default_device()
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state.get("model_state_dict", state)
        bert = {k.split("bert.", 1)[1]: v for k, v in state.items() if k.startswith(("module.bert.", "bert."))}
        hidden = bert["embeddings.word_embeddings.weight"].shape[1]
        config = BertConfig(
            vocab_size=bert["embeddings.word_embeddings.weight"].shape[0], hidden_size=hidden,
            num_hidden_layers=1 + max(int(k.split(".")[2]) for k in bert if k.startswith("encoder.layer.")),
            num_attention_heads=max(1, hidden // 64),  # BERT's heads are 64 wide
            intermediate_size=bert["encoder.layer.0.intermediate.dense.weight"].shape[0],
            max_position_embeddings=bert["embeddings.position_embeddings.weight"].shape[0],
            type_vocab_size=bert["embeddings.token_type_embeddings.weight"].shape[0])
        self.model = BertModel(config, add_pooling_layer="pooler.dense.weight" in bert)
        missing, unexpected = self.model.load_state_dict(bert, strict=False)
        missing = [k for k in missing + unexpected if not k.endswith("position_ids")]  # a buffer in old versions
        if missing:
            raise ValueError(f"{checkpoint} does not fit a BERT encoder: {missing[:5]}")
        self.model.eval().to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)

    def __call__(self, texts, batch_size=64):
        """[CLS] vectors of the final layer, one per text (reports truncated to BERT's 512 tokens)."""
        vectors = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer([" ".join(t.split()) for t in texts[i:i + batch_size]], padding=True,
                                   truncation=True, max_length=512, return_tensors="pt").to(self.device)
            with self.torch.no_grad():
                vectors.append(self.model(**batch).last_hidden_state[:, 0].float().cpu())
        return self.torch.cat(vectors)

    def similarity(self, predictions, references):
        distinct = sorted(set(predictions) | set(references))
        vectors = dict(zip(distinct, self(distinct)))
        cos = self.torch.nn.functional.cosine_similarity
        return [float(cos(vectors[p], vectors[r], dim=0)) for p, r in zip(predictions, references)]


class RadGraphScorer:
    """RadGraph annotations through the `radgraph` package (its RadGraph-XL by default), and the two F1s the
    rewards use: RadCliQ's (entity F1 + relation F1) / 2, and the package's "complete" reward."""

    def __init__(self, model_dir, model_type="radgraph-xl", device=None):
        try:
            from radgraph import RadGraph
            from radgraph.rewards import compute_reward
        except ImportError as e:
            raise MissingModelError("RadGraph F1 needs the radgraph package: pip install radgraph==0.1.18") from e
        if not os.path.isdir(os.path.join(model_dir, model_type)):
            raise MissingModelError(f"radgraph_model_dir={model_dir!r} has no {model_type}/ folder (the radgraph "
                                    f"package's model_cache_dir with the {model_type} archive unpacked)")
        device = device or _default_device()
        self.model = RadGraph(model_type=model_type, model_cache_dir=model_dir,  # cuda: a GPU index, -1 the CPU
                              cuda=int(device.partition(":")[2] or 0) if device.startswith("cuda") else -1)
        self.compute_reward = compute_reward

    def annotate(self, texts):
        distinct = sorted(set(texts))
        annotations = self.model(distinct)
        return {text: annotations[str(i)] for i, text in enumerate(distinct)}

    @staticmethod
    def radcliq_f1(prediction, reference):
        """Mean of the entity F1 (on token text + label) and the relation F1 (on both ends + relation type)."""
        def entities(a):
            return {(e["tokens"], e["label"]) for e in a["entities"].values()}

        def relations(a):
            ents = a["entities"]
            return {((e["tokens"], e["label"]), (ents[j]["tokens"], ents[j]["label"]), kind)
                    for e in ents.values() for kind, j in e["relations"] if j in ents}
        def f1(predicted, gold):
            return 2 * len(predicted & gold) / (len(predicted) + len(gold)) if predicted & gold else 0.0
        return (f1(entities(prediction), entities(reference)) + f1(relations(prediction), relations(reference))) / 2

    def __call__(self, predictions, references, level="radcliq"):
        annotated = self.annotate(predictions + references)
        pairs = [(annotated[p], annotated[r]) for p, r in zip(predictions, references)]
        if level == "radcliq":
            return [self.radcliq_f1(p, r) for p, r in pairs]
        return [self.compute_reward(p, r, level) for p, r in pairs]


_LOADED = {}  # built scorers by (kind, path): a model is read from disk once per process


def weights_path(folder, name, metric):
    """FOLDER/name, or MissingModelError naming it: the one way every metric finds its weights."""
    path = os.path.join(folder, name) if folder else None
    if not path or not os.path.exists(path):
        raise MissingModelError(f"{metric} needs {path or 'METRIC_WEIGHTS/' + name} ({WEIGHTS[name]}): pass "
                                f"--metric_weights=FOLDER laid out as scorers.py's docstring says (nothing is "
                                f"downloaded)")
    return path


def bert_scorer(folder, model="distilroberta-base"):
    path = weights_path(folder, model, f"BERTScore ({model})")
    if ("bertscore", path) not in _LOADED:
        _LOADED["bertscore", path] = BertScorer(path, *BERTSCORE_LAYER_BASELINE[model])
    return _LOADED["bertscore", path]


def chexbert_embedder(folder):
    checkpoint = weights_path(folder, "chexbert.pth", "CheXbert")
    tokenizer = weights_path(folder, "bert-base-uncased", "CheXbert")
    if ("chexbert", checkpoint) not in _LOADED:
        _LOADED["chexbert", checkpoint] = CheXbertEmbedder(checkpoint, tokenizer)
    return _LOADED["chexbert", checkpoint]


def radgraph_scorer(folder):
    model_dir = weights_path(folder, "radgraph", "RadGraph F1")
    if ("radgraph", model_dir) not in _LOADED:
        _LOADED["radgraph", model_dir] = RadGraphScorer(model_dir)
    return _LOADED["radgraph", model_dir]


def chexbert_labels(texts, folder):
    """[N, 14] booleans, observation stated positive or uncertain (records.CHEXPERT_LABELS order), from CheXbert's
    14 linear heads (13 x {blank, positive, negative, uncertain}, then No Finding x {blank, positive}) over the
    [CLS] vector of the CheXbertEmbedder that RadCliQ shares."""
    import torch
    embedder = chexbert_embedder(folder)
    state = torch.load(weights_path(folder, "chexbert.pth", "CheXbert"), map_location="cpu", weights_only=True)
    state = state.get("model_state_dict", state)
    prefix = next(k for k in state if k.endswith("linear_heads.0.weight"))[:-len("0.weight")]
    cls = embedder(texts).float()
    classes = torch.stack([(cls @ state[f"{prefix}{i}.weight"].float().T + state[f"{prefix}{i}.bias"].float()).argmax(1)
                           for i in range(14)], 1)
    heads = CHEXPERT_LABELS[1:] + CHEXPERT_LABELS[:1]  # CheXbert's order: No Finding last
    return ((classes == 1) | (classes == 3)).numpy()[:, [heads.index(o) for o in CHEXPERT_LABELS]]


# GREEN (Ostmeier et al. 2024) as its green_score package runs the local judge: this prompt (every line after the
# first indented by 4 spaces) with reference and candidate cut to 300 words, its chat template, greedy decoding.
GREEN_PROMPT = textwrap.indent("""\
Objective: Evaluate the accuracy of a candidate radiology report in comparison to a reference radiology report \
composed by expert radiologists.

Process Overview: You will be presented with:

1. The criteria for making a judgment.
2. The reference radiology report.
3. The candidate radiology report.
4. The desired format for your assessment.

1. Criteria for Judgment:

For each candidate report, determine:

The count of clinically significant errors.
The count of clinically insignificant errors.

Errors can fall into one of these categories:

a) False report of a finding in the candidate.
b) Missing a finding present in the reference.
c) Misidentification of a finding's anatomic location/position.
d) Misassessment of the severity of a finding.
e) Mentioning a comparison that isn't in the reference.
f) Omitting a comparison detailing a change from a prior study.
Note: Concentrate on the clinical findings rather than the report's writing style. Evaluate only the findings that \
appear in both reports.

2. Reference Report:
{reference}

3. Candidate Report:
{candidate}

4. Reporting Your Assessment:

Follow this specific format for your output, even if no errors are found:
```
[Explanation]:
<Explanation>

[Clinically Significant Errors]:
(a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>
....
(f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>

[Clinically Insignificant Errors]:
(a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>
....
(f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>

[Matched Findings]:
<The number of matched findings>. <Finding 1>; <Finding 2>; ...; <Finding n>
```
""", "    ").lstrip()
GREEN_CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['from'] == 'human' %}\n{{ '<|user|>\\n' + message['value'] + "
    "eos_token }}\n{% elif message['from'] == 'gpt' %}\n{{ '<|assistant|>\\n'  + message['value'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")


def green_score(judgement):
    """matched findings / (matched findings + clinically significant errors (a)-(f)), parsed as green_score does;
    0 when the judge names no matched finding (also when its answer cannot be parsed)."""
    def section(name):
        found = re.search(rf"\[{name}\]:\s*(.*?)(?:\n\s*\n|\Z)", judgement, re.DOTALL)
        return "" if found is None or found.group(1).startswith("No") else found.group(1)
    matched = re.findall(r"^\b\d+\b(?=\.)", section("Matched Findings"), re.MULTILINE)
    if not matched or int(matched[0]) == 0:
        return 0.0
    errors, body = {}, section("Clinically Significant Errors")
    for line in sorted(re.findall(r"\([a-f]\) .*", body)) or sorted(re.findall(r"\([1-6]\) .*", body)):
        count = re.search(r"(?<=: )\b\d+\b(?=\.)", line)
        if count:
            errors[line[:3]] = int(count.group())
    return int(matched[0]) / (int(matched[0]) + sum(errors.values()))


def green_scores(candidates, references, folder, batch_size=8, max_length=2048):
    """GREEN of each candidate report against its reference, judged greedily by the local GREEN model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model_dir = weights_path(folder, "GREEN-radllama2-7b", "GREEN")
    device = _default_device()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, add_eos_token=True, padding_side="left")
    tokenizer.chat_template, tokenizer.pad_token = GREEN_CHAT_TEMPLATE, tokenizer.eos_token
    judge = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16 if device != "cpu" else torch.float32)
    judge.to(device).eval()
    cut = lambda text: " ".join(text.split()[:300])  # noqa: E731
    scores = []
    for start in range(0, len(candidates), batch_size):
        pairs = zip(candidates[start:start + batch_size], references[start:start + batch_size])
        chats = [[{"from": "human", "value": GREEN_PROMPT.format(reference=cut(r), candidate=cut(c))},
                  {"from": "gpt", "value": ""}] for c, r in pairs]
        texts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(device)
        with torch.no_grad():
            out = judge.generate(**batch, max_length=max_length, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        judgements = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        scores += [green_score(j) for j in judgements]
    return scores


