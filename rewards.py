"""
rewards.py: every reward of the project, as pure functions of (completion, reference) texts.

GRPO scores thousands of completions per step, so the default rewards are plain Python over precompiled
regexes (>= 10,000 completions/s on one core: `python bench/bench_rewards.py`), and `import rewards` brings no
torch (a reward server or a grader can run them alone). The paper's model-based report reward (-RadCliQ-v1) and
its Table 3 ablations take their models from scorers.py, on first use, out of one local weights folder.

    rewards, components = score(task, completions, answers, reward=None, thinking=False, metric_weights="",
                                grounding="soft_f1")

- task: "report" | "classification" | "grounding", or a record task of records.TASKS (every *_grounding task
  is "grounding"), or a list with one task per completion (a mixed batch).
- reward: the report reward, one of REPORT_REWARDS (default "label_f1"); grounding: the grounding reward, one of
  GROUNDING_REWARDS (default the paper's "soft_f1"); classification has one reward.
- thinking: score only the text after the last `</think>`. A completion without one is scored as an empty
  answer, which is the task's floor (grounding 0, label_f1 0, RadCliQ -3), as in the paper.
- returns one float per completion and {name: one float per completion} for logging (nan where a value
  does not apply to that completion).

The rewards:
- grounding_reward: the paper's soft-F1 of Hungarian-matched IoU (boxes parsed by records.parse_boxes).
  grounding_hit: 1 when every gold box is matched by one predicted box at IoU >= 0.5 and no box is left over, else
  0: a binary, verifiable reward (mAP@0.5's threshold), whose groups often tie (lessons.py's dynamic sampling).
- classification_reward: F1 between the sets of abnormality names listed in the answer and the gold.
- label_f1 (default report reward, offline): 0.75 x F1 between the findings that extract_labels (a
  rule-based CheXpert labeler) finds stated present or possible in prediction and reference ("No Finding"
  is a class of its own, so a correctly reported normal study scores well and an empty one 0) + 0.25 x F1
  of the findings stated absent (so a complete report beats a one-word answer). A finding the prediction
  both asserts and denies on the same side counts as a false positive, and degenerate text (the same few
  words repeated) scores 0.
- radcliq: -RadCliQ-v1 (Yu et al. 2023): RadGraph F1, BERTScore, CheXbert-embedding cosine and BLEU,
  standardized and weighted by the published model; texts lower-cased and cut to 2,048 characters, -3 when
  either is 5 characters or shorter or scoring fails.
- bertscore, radgraph ("complete" level), gleu, bleu4: the Table 3 ablation rewards; positive_f1: label_f1's
  first part alone, a reward that sees only part of a report (the miniature's stand-in for RadGraph F1's hack).

metric_weights: the folder of the model-based rewards' weights, laid out as scorers.py says (a missing file raises
scorers.MissingModelError naming it; nothing is ever downloaded).

Deliberately left out: GREEN and the other LLM-judged metrics (evaluation only, not rewards), and a
separate format reward (the paper has none).
"""

import bisect
import functools
import math
import re
import warnings
from collections import Counter

from records import CHEXPERT_LABELS, GROUNDING_TASKS, box_iou, parse_boxes


MAX_REPORT_CHARS = 2048  # the paper cuts both texts to this length before scoring a report
REPORT_REWARDS = ("label_f1", "radcliq", "bertscore", "radgraph", "gleu", "bleu4", "positive_f1")
GROUNDING_REWARDS = ("soft_f1", "hit")
HIT_IOU = 0.5  # a predicted box hits a gold box at this IoU or more (the threshold of mAP@0.5)


def final_answer(completion, thinking=False):
    """The text a reward scores: all of it, or with thinking only what follows the last `</think>`
    ("" when there is none, which every reward scores at its floor)."""
    if not thinking:
        return completion
    end = completion.rfind("</think>")
    return "" if end < 0 else completion[end + len("</think>"):]


# ----------------------------------------------------------------------------------------------------------
# Grounding: soft-F1 of Hungarian-matched IoU

def min_cost_assignment(cost):
    """One-to-one assignment of min(rows, cols) pairs minimizing the total cost: the Hungarian algorithm with
    row/column potentials (Kuhn-Munkres, O(n^2 m)), for a rectangular list-of-lists matrix. Returns sorted
    (row, col) pairs. Each row i is inserted in turn; a Dijkstra-like search over columns along reduced
    costs cost[i][j] - u[i] - v[j] >= 0 finds the cheapest augmenting path, and the potentials keep every
    matched pair at reduced cost 0, which certifies optimality."""
    if not cost or not cost[0]:
        return []
    transposed = len(cost) > len(cost[0])
    if transposed:  # the search below inserts rows, so it wants rows <= columns
        cost = [list(column) for column in zip(*cost)]
    n, m = len(cost), len(cost[0])
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)  # potentials; index 0 is a virtual row/column
    row_of = [0] * (m + 1)  # row_of[j]: 1-based row matched to column j, 0 if free
    for i in range(1, n + 1):
        row_of[0], j0 = i, 0
        best = [math.inf] * (m + 1)  # cheapest reduced cost to reach each column so far
        came_from = [0] * (m + 1)
        done = [False] * (m + 1)
        while row_of[j0]:  # grow the search tree until it reaches a free column
            done[j0] = True
            i0, delta, j1 = row_of[j0], math.inf, 0
            for j in range(1, m + 1):
                if not done[j]:
                    reduced = cost[i0 - 1][j - 1] - u[i0] - v[j]
                    if reduced < best[j]:
                        best[j], came_from[j] = reduced, j0
                    if best[j] < delta:
                        delta, j1 = best[j], j
            for j in range(m + 1):
                if done[j]:
                    u[row_of[j]] += delta
                    v[j] -= delta
                else:
                    best[j] -= delta
            j0 = j1
        while j0:  # flip the augmenting path back to the virtual column
            j1 = came_from[j0]
            row_of[j0] = row_of[j1]
            j0 = j1
    pairs = [(row_of[j] - 1, j - 1) for j in range(1, m + 1) if row_of[j]]
    return sorted((j, i) for i, j in pairs) if transposed else sorted(pairs)


def grounding_reward(completion, answer, thinking=False):
    """The paper's grounding reward: Hungarian-match predicted to gold boxes on 1 - IoU, keep pairs with
    IoU > 0, TP = sum of their IoUs, precision = TP / (TP + FP), recall = TP / n_gold, reward = their
    harmonic mean; 0 when either side has no box."""
    predicted, gold, matched = matched_ious(completion, answer, thinking)
    if not predicted or not gold:
        return 0.0
    matched = [x for x in matched if x > 0]
    tp = sum(matched)
    if tp == 0:
        return 0.0
    precision = tp / (tp + len(predicted) - len(matched))
    recall = tp / len(gold)
    return 2 * precision * recall / (precision + recall)


def grounding_hit(completion, answer, thinking=False):
    """1.0 when the Hungarian match (as in grounding_reward) pairs every gold box with a predicted one at IoU >=
    HIT_IOU and no predicted box is left over, else 0.0."""
    predicted, gold, matched = matched_ious(completion, answer, thinking)
    return float(bool(gold) and len(predicted) == len(gold) and all(x >= HIT_IOU for x in matched))


def matched_ious(completion, answer, thinking=False):
    """(predicted boxes, gold boxes, the IoU of each pair of the Hungarian match on 1 - IoU): what both grounding
    rewards score."""
    predicted, gold = parse_boxes(final_answer(completion, thinking)), parse_boxes(answer)
    ious = [[box_iou(p, g) for g in gold] for p in predicted]
    return predicted, gold, [ious[i][j] for i, j in min_cost_assignment([[1.0 - x for x in row] for row in ious])]


# ----------------------------------------------------------------------------------------------------------
# Classification: F1 of the listed abnormality names

_LIST_ITEM_SPLIT = re.compile(r",|;|\band\b")
_ARTICLE = re.compile(r"^(?:an?|the) ")
_NORMAL_ANSWER = re.compile(r"\bno\b|\bnormal\b|\bnone\b")


def abnormality_names(text):
    """{'cardiomegaly', 'edema', 'pleural effusion'} from '... identified: cardiomegaly, edema and pleural
    effusion.' (the list after the last colon; no colon, no names)."""
    text = text.lower()
    colon = text.rfind(":")
    if colon < 0:
        return set()
    items = (_ARTICLE.sub("", item.strip(" .\n\t")) for item in _LIST_ITEM_SPLIT.split(text[colon + 1:]))
    return {item for item in items if item}


def set_f1(predicted, gold):
    tp = len(predicted & gold)
    return 2 * tp / (len(predicted) + len(gold)) if tp else 0.0  # = 2PR / (P + R)


def classification_reward(completion, answer, thinking=False):
    """F1 of the abnormality-name sets; a normal gold is matched only by an answer that says so."""
    text = final_answer(completion, thinking)
    predicted, gold = abnormality_names(text), abnormality_names(answer)
    if not gold:
        return float(not predicted and bool(_NORMAL_ANSWER.search(text.lower())))
    return set_f1(predicted, gold)


# ----------------------------------------------------------------------------------------------------------
# Report labeler: rule-based CheXpert observations (mention phrases, negation, uncertainty, normal statements)

OBSERVATIONS = CHEXPERT_LABELS
PATHOLOGIES = OBSERVATIONS[1:-1]  # what "No Finding" rules out (CheXpert: support devices do not count)

_HEART = r"(?:heart|cardiac)(?: (?:size|silhouette|shadow|contours?|diameter))?"
_MEDIASTINUM = r"mediastin(?:um|al)(?: (?:silhouette|contours?|shadow|width|structures))?"
_AND_MORE = r"(?:,? and (?:the )?[a-z]+(?: [a-z]+){0,2})?"  # "heart size and pulmonary vascularity are normal"
_VERB = r"(?: (?:is|are|appears?|remains?|seems?|again|still|xxxx))*"  # xxxx: an anonymized word (IU reports)
_NORMAL = (r"(?: \w+)? (?:normal|within (?:the )?(?:normal limits|limits of normal)|unremarkable"
           r"|not (?:\w+ )?(?:enlarged|widened))")
_LARGE = r"(?: (?!not\b)\w+){0,2}? (?:enlarged|enlargement|large|increased|widened|widening|prominent)"

# (observations, forced value, phrase). Phrases start where a word starts; at one position the first listed
# phrase wins, so normal and borderline statements precede the plain mentions that start with the same words.
# A forced value replaces what the context would give (0: a normal statement; -1: borderline). Observations ()
# with 0 mark a statement that only tells that the report says something normal (evidence for "No Finding");
# () with None, a phrase that contains a mention word but is no finding ("pericardial effusion").
_PHRASES = [
    ((), None, r"pericardial effusions?|joint effusions?|(?:soft )?tissue (?:edema|densit(?:y|ies))"
               r"|granulomatous infection|(?:lytic|osseous|bony|bone|sclerotic|blastic) lesions?"
               r"|(?:calcified|bone|bony) densit(?:y|ies)"),
    (("Cardiomegaly",), -1,
     rf"{_HEART}{_VERB}(?: at)?(?: the)? (?:upper limits? (?:of )?normal|(?:top|high|upper)[- ]normal"
     r"|borderline(?: \w+)?)|borderline (?:heart|cardiac) (?:size|enlargement)|borderline cardiomegaly"),
    (("Cardiomegaly", "Enlarged Cardiomediastinum"), 0,
     rf"(?:cardio-?|{_HEART},? and (?:the )?){_MEDIASTINUM}{_AND_MORE}{_VERB}{_NORMAL}|normal cardio-?{_MEDIASTINUM}"),
    (("Cardiomegaly",), 0, rf"{_HEART}{_AND_MORE}{_VERB}{_NORMAL}|normal(?:[- ]sized?)? {_HEART}"),
    (("Enlarged Cardiomediastinum",), 0, rf"{_MEDIASTINUM}{_AND_MORE}{_VERB}{_NORMAL}|normal {_MEDIASTINUM}"),
    (("Edema",), 0,
     rf"(?:pulmonary )?vascula(?:ture|rity){_AND_MORE}{_VERB}{_NORMAL}|normal (?:pulmonary )?vascula\w*"),
    (("Pleural Effusion",), 0,
     r"(?:costophrenic|cp) (?:angles?|sulc(?:us|i)|recess(?:es)?)(?: are| is| appear| remain)*(?: \w+)?"
     r" (?:sharp|clear|preserved|normal)|sharp costophrenic"),
    (("Fracture",), 0, r"no (?:acute )?(?:bony|osseous|skeletal) (?:abnormalit\w*|injur\w*|lesions?)"),
    ((), 0,
     r"no acute (?:cardiopulmonary |intrathoracic |thoracic |cardiac |pulmonary |chest |radiographic )?"
     r"(?:abnormalit\w*|process|disease|findings?|pathology)|lungs? (?:are |is |appears? |remains? )?(?:\w+ )?clear"
     r"|clear lungs?|(?:normal|negative|unremarkable) (?:chest|study|exam\w*|radiograph\w*)|normal\b"),
    (("Cardiomegaly",), None,
     rf"cardiomegaly|{_HEART}{_VERB}{_LARGE}|(?:enlarged|large) (?:heart|cardiac)|(?:heart|cardiac) enlargement"
     r"|enlargement of the (?:heart|cardiac)|increase in (?:the )?(?:heart|cardiac) size"),
    (("Cardiomegaly", "Enlarged Cardiomediastinum"), None,
     rf"cardio-?{_MEDIASTINUM}{_VERB}{_LARGE}|(?:enlarged|widened) cardio-?mediastin\w*"),
    (("Enlarged Cardiomediastinum",), None,
     rf"{_MEDIASTINUM}{_VERB}{_LARGE}|(?:widened|widening of the|enlarged|prominent|prominence of the) (?:\w+ )?"
     r"mediastin\w*|mediastinal (?:widening|enlargement)"),
    (("Pleural Other",), None,
     r"pleural (?:thickening|scar\w*|plaques?|calcifications?|reaction)|fibrothorax|(?:apical )?pleural caps?"
     r"|apical capping|fissural thickening|thickening (?:of|in) the (?:\w+ )?fissure|(?:thickening|calcification) of"
     r" the (?:\w+ )?pleura|pleur(?:o-?|al-)parenchymal (?:scar\w*|thickening|opacit\w*|changes?)"),
    (("Lung Lesion", "Lung Opacity"), None, r"nodular (?:opacit(?:y|ies)|densit(?:y|ies))"),
    (("Lung Lesion",), None,
     r"(?:fibro|reticulo|micro)?nodul(?:e|es|ar)|mass(?:es)?\b(?! effect)|tumou?rs?|neoplas\w*|carcinoma|malignan\w*"
     r"|metasta\w*|cancer|lesions?\b"),
    (("Consolidation",), None, r"(?:air[- ]?space )?consolidat(?:ion|ions|ive|ed|ing)"),
    (("Lung Opacity",), None,
     r"opaci(?:ty|ties|fication|fications|fied)|infiltrat(?:e|es|ion|ions|ive)|ground[- ]glass|fibrotic changes?"
     r"|air[- ]?space (?:disease|process|opacit\w*|filling)|densit(?:y|ies)"
     r"|reticula(?:r|tion)\w*|interstitial (?:markings?|opacit\w*|pattern|prominence|thickening|(?:lung )?disease"
     r"|changes?)|scar(?:s|ring|red)?\b"),
    (("Edema",), None,
     r"edema|(?:(?:pulmonary )?(?:vascular|venous) )?(?:congestion|engorgement)|engorged\b|chf\b"
     r"|congestive (?:heart )?failure|heart failure|cephalization|kerley|venous hypertension"
     r"|vascular (?:prominence|indistinctness|redistribution)|(?:prominen|indistinct)\w* (?:of the )?(?:\w+ )?"
     r"(?:vascula\w*|vessels)"),
    (("Pneumonia",), None, r"(?:broncho)?pneumonias?|pneumonitis|infect(?:ion|ions|ious)"),
    (("Atelectasis",), None,
     r"atelecta(?:sis|ses|tic)|(?:lobar|segmental|lung|lobe) collapse|collapsed (?:\w+ )?(?:lobe|lung)"
     r"|collapse of (?:the |a )?(?:\w+ ){0,3}?(?:lobes?|lungs?)"),
    (("Pneumothorax", "Pleural Effusion"), None, r"(?:hydro|hemo|haemo)pneumothora(?:x|ces)"),
    (("Pneumothorax",), None, r"pneumothora(?:x|ces)|ptx\b|pleural air"),
    (("Pleural Effusion",), None,
     r"effusions?|pleural fluid|(?:hydro|hemo)thorax"
     r"|fluid (?:in|within|tracking into) the (?:\w+ )?(?:fissures?|pleural spaces?)"),
    (("Fracture",), None, r"fractur\w*|fx\b"),
    (("Support Devices",), None,
     r"tubes?\b|catheters?|picc\b|(?:central|venous|arterial|midline|dialysis|port|jugular|subclavian)(?: venous)?"
     r" (?:lines?|catheters?)|pacemakers?|pacers?\b|defibrillators?|a?icds?\b|loop recorders?|leads\b|stents?\b"
     r"|mediport|port-?a-?cath|portacath|(?:prosthetic|replacement|mechanical) (?:\w+ )?valves?"
     r"|valve (?:replacement|prosthesis)|drains?\b|hardware|coils?\b|swan[- ]ganz|tips?\b|generators?|stimulators?"
     r"|shunt|devices?\b|prosthe(?:sis|tic)|fixation|anchors?"),
]
# One pass over the text. Speed (the engine tries every phrase wherever a word starts): the lookahead skips
# other positions, and each phrase's empty group comes after it, which keeps the engine's quick first-letter
# rejection; m.lastgroup names the phrase that matched.
_MENTION = re.compile(r"\b(?=[a-z])(?:"
                      + "|".join(f"(?:{phrase})(?P<p{i}>)" for i, (_, _, phrase) in enumerate(_PHRASES)) + ")")
_PHRASE_OF_GROUP = {f"p{i}": (observations, forced) for i, (observations, forced, _) in enumerate(_PHRASES)}

# A negation or uncertainty cue reaches every mention after it in its clause ("no effusion or
# pneumothorax") but not across clause breaks: sentence ends, contrasts, "which", a new "there is".
_CLAUSE_BREAK = re.compile(r"[.;:!?](?:\s|$)|\n|\b(?:but|however|although|though|whereas|except|aside from|apart from"
                           r"|other than|otherwise|which|with|there (?:is|are|has been|have been))\b")
_NEGATION_BEFORE = re.compile(
    r"\bno\b(?! (?:significant |appreciable |definite |interval |substantial )?(?:change|increase|decrease|"
    r"improvement|worsening|progression|growth))|(?<!can )\bnot\b(?! (?:be )?(?:excluded|ruled out|exclude))"
    r"|\b(?:without|negative for|free of|absence of|resolution of|resolved|clear of|clearing of|cleared|rather than|nor"
    r"|removal of)\b")
_NEGATION_AFTER = re.compile(
    r"[^,]{0,40}?\b(?:(?:has|have) (?:\w+ )?(?:resolved|cleared|been removed)|resolved|no longer|absent|removed"
    r"|(?:is|are|was|were) not (?:\w+ )?(?:seen|present|identified|visualized|evident|appreciated|demonstrated"
    r"|visible|noted))\b")
_UNCERTAIN = re.compile(
    r"\b(?:may|might|could|possibl[ey]|probabl[ey]|likely|question\w*|suspect\w*|suspicio\w*|concern\w*|favou?r\w*"
    r"|suggest\w*|cannot (?:be )?(?:excluded?|ruled? out)|can not|not (?:be )?(?:excluded|ruled out)|rule out|versus|vs"
    r"|differential|equivocal|borderline|indeterminate|underlying|worrisome)\b|\?")
_SIDE = re.compile(r"\b(?:(bilateral\w*|bibasilar|both)|(left)|(right))\b")


def _clause_side(text, start, end):
    side = _SIDE.search(text, start, end)
    return None if side is None else ("both", "left", "right")[side.lastindex - 1]


def _same_side(a, b):
    return a is None or b is None or a == b or "both" in (a, b)


@functools.lru_cache(maxsize=1 << 16)  # references recur in every group of a GRPO batch
def _read_report(report):
    """(labels, contradicted observations) of one report; see extract_labels."""
    text = report.lower()
    breaks = [0] + [m.start() for m in _CLAUSE_BREAK.finditer(text)] + [len(text)]
    statements = {}  # observation -> [(value, clause start, clause end)]
    says_normal = False
    for m in _MENTION.finditer(text):
        observations, forced = _PHRASE_OF_GROUP[m.lastgroup]
        if not observations and forced is None:
            continue
        k = bisect.bisect_right(breaks, m.start())
        start, end = breaks[k - 1], breaks[k]
        if forced == 0 or _NEGATION_BEFORE.search(text, start, m.start()) or _NEGATION_AFTER.match(text, m.end(), end):
            value = 0
        elif forced == -1 or _UNCERTAIN.search(text, start, end):
            value = -1
        else:
            value = 1
        says_normal |= value == 0
        for observation in observations:
            statements.setdefault(observation, []).append((value, start, end))
    labels, contradicted = {}, set()
    for observation, found in statements.items():
        values = {value for value, _, _ in found}
        labels[observation] = 1 if 1 in values else (-1 if -1 in values else 0)  # CheXpert: positive wins
        if 1 in values and 0 in values:  # stated present and absent: a contradiction unless on different sides
            present = [_clause_side(text, start, end) for value, start, end in found if value == 1]
            absent = [_clause_side(text, start, end) for value, start, end in found if value == 0]
            if any(_same_side(a, b) for a in present for b in absent):
                contradicted.add(observation)
    if says_normal and not any(labels.get(o, 0) for o in PATHOLOGIES):
        labels["No Finding"] = 1
    return labels, frozenset(contradicted)


def extract_labels(report):
    """{CheXpert observation: 1 (present) | 0 (absent) | -1 (uncertain)} stated in a free-text report;
    observations the report does not mention are left out. Mentions (phrase lists in _PHRASES) are read in
    their clause: a negation cue before them ("no", "without", "free of", "resolved", ...) or after them
    ("has resolved", "is not seen") makes them 0, an uncertainty cue in the clause ("may", "possible",
    "cannot be excluded", "versus", ...) -1, and normal statements ("heart size is normal") give 0. An
    observation stated several ways is positive if any statement is (CheXpert's rule). "No Finding" is 1
    when no pathology is positive or uncertain and the report says something normal or negative."""
    return dict(_read_report(report)[0])


# ----------------------------------------------------------------------------------------------------------
# Offline report reward

def _is_degenerate(text):
    """A long text made of a handful of distinct words (a token or sentence repeated over and over)."""
    words = text.split()
    return len(words) >= 50 and len(set(words)) < len(words) / 4


def _stated_findings(report):
    """(findings stated present or possible, findings stated absent, contradicted findings)."""
    labels, contradicted = _read_report(report[:MAX_REPORT_CHARS])
    present = {o for o, value in labels.items() if value}  # uncertain counts as positive (paper)
    return present, {o for o, value in labels.items() if value == 0}, contradicted


def _set_f1(predicted, gold, wrong=frozenset()):
    tp = len((predicted - wrong) & gold)
    if tp == 0:
        return 0.0
    precision, recall = tp / len(predicted), tp / len(gold)
    return 2 * precision * recall / (precision + recall)


NEGATION_WEIGHT = 0.25  # share of the reward for stating the reference's normal findings as normal


def _label_f1_parts(prediction, reference, thinking):
    """(F1 of the findings stated present or possible, F1 of the findings stated absent or None when the reference
    negates nothing) of a prediction against its reference; (0, 0) for an empty or degenerate prediction."""
    text = final_answer(prediction, thinking)
    if not text.strip() or _is_degenerate(text[:MAX_REPORT_CHARS]):
        return 0.0, 0.0
    predicted, predicted_absent, contradicted = _stated_findings(text)
    gold, gold_absent, _ = _stated_findings(reference)
    positive = 1.0 if not predicted and not gold else _set_f1(predicted, gold, contradicted)
    return positive, _set_f1(predicted_absent - contradicted, gold_absent) if gold_absent else None


def label_f1(prediction, reference, thinking=False):
    """0.75 x F1 of the findings stated present or possible (plus "No Finding") + 0.25 x F1 of the findings
    stated absent, prediction against reference. The negated part makes a complete report ("... No
    pneumothorax. The heart size is normal.") beat a one-word answer naming the right finding; when the
    reference negates nothing, only the first part counts. A contradicted finding is a false positive;
    empty or degenerate predictions score 0; when neither text states any positive finding, a non-empty
    prediction gets the first part (it agrees that there is none)."""
    positive, negative = _label_f1_parts(prediction, reference, thinking)
    return positive if negative is None else (1 - NEGATION_WEIGHT) * positive + NEGATION_WEIGHT * negative


def positive_f1(prediction, reference, thinking=False):
    """label_f1's first part alone: F1 of the findings stated present or possible. A reward that sees only part of a
    report, as RadGraph F1 does in the paper's Table 3 (whose reward on it shrank reports from 207 to 93 characters):
    the negations, half of a normal report's sentences, earn nothing here."""
    return _label_f1_parts(prediction, reference, thinking)[0]


# ----------------------------------------------------------------------------------------------------------
# N-gram report rewards: BLEU-4 and GLEU (Google BLEU)

_TOKEN = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")


def _ngram_counts(tokens, n):
    return Counter(zip(*(tokens[i:] for i in range(n))))


def bleu4(prediction, reference):
    """Sentence BLEU-4: geometric mean of clipped 1-4-gram precisions times the brevity penalty, no smoothing."""
    hyp, ref = _TOKEN.findall(prediction.lower()), _TOKEN.findall(reference.lower())
    if not hyp or not ref:
        return 0.0
    log_precision = 0.0
    for n in range(1, 5):
        matches = sum((_ngram_counts(hyp, n) & _ngram_counts(ref, n)).values())
        if matches == 0:
            return 0.0
        log_precision += math.log(matches / (len(hyp) - n + 1)) / 4
    return math.exp(min(0.0, 1 - len(ref) / len(hyp)) + log_precision)


def gleu(prediction, reference):
    """Sentence GLEU (Wu et al. 2016, as nltk's sentence_gleu): matching 1-4-grams over the larger of the
    two 1-4-gram totals, i.e. min(precision, recall)."""
    hyp, ref = _TOKEN.findall(prediction.lower()), _TOKEN.findall(reference.lower())
    matches = hyp_total = ref_total = 0
    for n in range(1, 5):
        h, r = _ngram_counts(hyp, n), _ngram_counts(ref, n)
        matches += sum((h & r).values())
        hyp_total, ref_total = hyp_total + sum(h.values()), ref_total + sum(r.values())
    return matches / max(hyp_total, ref_total) if matches else 0.0


# ----------------------------------------------------------------------------------------------------------
# RadCliQ-v1 and its model-based parts (optional extras: local weights, loaded on first use)

# feature: (mean, scale, coefficient) of Yu et al.'s released RadCliQ-v1 model (StandardScaler + linear fit)
RADCLIQ_V1 = {
    "radgraph": (0.53792312, 0.30282584, -0.377083683),
    "bertscore": (0.61757256, 0.22430938, -0.370300100),
    "semb": (0.76479421, 0.25394391, -0.252616218),
    "bleu": (0.44738335, 0.29892717, 4.31504841e-12),  # BLEU is effectively unused
}
RADCLIQ_V1_INTERCEPT = 2.46655256e-10
RADCLIQ_FLOOR = -3.0
def radcliq_v1(radgraph, bertscore, semb, bleu):
    """RadCliQ-v1 of one pair from its four features (lower is better); the paper's reward is minus this."""
    features = {"radgraph": radgraph, "bertscore": bertscore, "semb": semb, "bleu": bleu}
    return RADCLIQ_V1_INTERCEPT + sum(coef * (features[name] - mean) / scale
                                      for name, (mean, scale, coef) in RADCLIQ_V1.items())


def radcliq_rewards(predictions, references, metric_weights="", floor_on_failure=True):
    """-RadCliQ-v1 for each pair of final answers, batched, plus its four features (nan where floored); the
    feature models come from the metric_weights folder (scorers.py). A batch whose scoring fails is floored with a
    warning (training goes on), or raises with floor_on_failure=False (evaluation reports the metric as failed
    instead of a number)."""
    import scorers
    predictions = [p.lower()[:MAX_REPORT_CHARS] for p in predictions]
    references = [r.lower()[:MAX_REPORT_CHARS] for r in references]
    n = len(predictions)
    rewards = [RADCLIQ_FLOOR] * n
    features = {name: [math.nan] * n for name in ("radgraph", "bertscore", "semb", "bleu4")}
    scored = [i for i in range(n) if len(predictions[i]) > 5 and len(references[i]) > 5]
    if not scored:
        return rewards, features
    # fail early if a model is missing
    radgraph, bertscore, chexbert = (scorers.radgraph_scorer(metric_weights), scorers.bert_scorer(metric_weights),
                                     scorers.chexbert_embedder(metric_weights))
    preds, refs = [predictions[i] for i in scored], [references[i] for i in scored]
    try:
        values = {"radgraph": radgraph(preds, refs), "bertscore": bertscore(preds, refs),
                  "semb": chexbert.similarity(preds, refs), "bleu4": [bleu4(p, r) for p, r in zip(preds, refs)]}
    except Exception as e:  # the paper scores a failed batch at the floor rather than stopping training
        if not floor_on_failure:
            raise RuntimeError(f"RadCliQ scoring failed: {e!r}") from e
        warnings.warn(f"RadCliQ scoring failed, {len(scored)} completions get {RADCLIQ_FLOOR}: {e!r}")
        return rewards, features
    for j, i in enumerate(scored):
        for name in features:
            features[name][i] = values[name][j]
        rewards[i] = -radcliq_v1(values["radgraph"][j], values["bertscore"][j], values["semb"][j], values["bleu4"][j])
    return rewards, features


# ----------------------------------------------------------------------------------------------------------
# One entry point for GRPO

def task_kind(task):
    """'report' | 'classification' | 'grounding' for a short or a record task name."""
    if task == "grounding" or task in GROUNDING_TASKS:
        return "grounding"
    if task in ("report", "classification"):
        return task
    raise ValueError(f"no reward for task {task!r} (rewarded: report, classification, grounding, "
                     f"{', '.join(GROUNDING_TASKS)})")


def _score_kind(kind, reward, answers, golds, metric_weights, grounding):
    """(rewards, components) of final answers that all belong to one task kind."""
    if kind == "grounding":
        if grounding not in GROUNDING_REWARDS:
            raise ValueError(f"unknown grounding reward {grounding!r} (known: {', '.join(GROUNDING_REWARDS)})")
        values = [(grounding_reward if grounding == "soft_f1" else grounding_hit)(a, g) for a, g in zip(answers, golds)]
        return values, {"grounding": values, "n_boxes": [float(len(parse_boxes(a))) for a in answers]}
    if kind == "classification":
        values = [classification_reward(a, g) for a, g in zip(answers, golds)]
        return values, {"classification": values}
    if reward in ("label_f1", "positive_f1"):
        values = [(label_f1 if reward == "label_f1" else positive_f1)(a, g) for a, g in zip(answers, golds)]
        return values, {reward: values, "n_findings": [float(len(_stated_findings(a)[0])) for a in answers]}
    if reward == "radcliq":
        values, features = radcliq_rewards(answers, golds, metric_weights)
        return values, {"radcliq": values, **features}
    answers = [a.lower()[:MAX_REPORT_CHARS] for a in answers]  # the ablations see the texts RadCliQ sees
    golds = [g.lower()[:MAX_REPORT_CHARS] for g in golds]
    if reward == "bertscore":
        import scorers
        values = scorers.bert_scorer(metric_weights, "distilbert-base-uncased")(answers, golds)
    elif reward == "radgraph":
        import scorers
        values = scorers.radgraph_scorer(metric_weights)(answers, golds, level="complete")
    elif reward in ("gleu", "bleu4"):
        values = [(gleu if reward == "gleu" else bleu4)(a, g) for a, g in zip(answers, golds)]
    else:
        raise ValueError(f"unknown report reward {reward!r} (known: {', '.join(REPORT_REWARDS)})")
    return values, {reward: values}


def score(task, completions, answers, reward=None, thinking=False, metric_weights="", grounding="soft_f1"):
    """Rewards of a batch of completions against their gold answers; see the module docstring."""
    n = len(completions)
    tasks = [task] * n if isinstance(task, str) else list(task)
    if not len(tasks) == len(answers) == n:
        raise ValueError(f"{n} completions, {len(answers)} answers and {len(tasks)} tasks: they must match")
    kinds = [task_kind(t) for t in tasks]
    rewards, components = [0.0] * n, {}
    for kind in dict.fromkeys(kinds):  # each kind is scored as one batch (model-based rewards batch on the GPU)
        index = [i for i in range(n) if kinds[i] == kind]
        values, parts = _score_kind(kind, reward or "label_f1", [final_answer(completions[i], thinking) for i in index],
                                    [answers[i] for i in index], metric_weights, grounding)
        for j, i in enumerate(index):
            rewards[i] = values[j]
        for name, column in parts.items():
            full = components.setdefault(name, [math.nan] * n)
            for j, i in enumerate(index):
                full[i] = column[j]
    return rewards, components
