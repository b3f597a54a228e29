"""
data.py: from records to model inputs: images, chat messages, tokenization with assistant-only labels, M-RoPE-safe
packing, and the resumable training stream. The record vocabulary itself (tasks, prompts, the box format, record
I/O and checks) is records.py; `open_records` here adds the synthetic world as a source.

    python data.py synth --n 500 --out out/synth     # PNGs + records.jsonl + contact_sheet.png
    python data.py convert vindr-cxr --root DIR --out vindr.jsonl   # real datasets, see converters.py
"""

import functools
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from distributed import print0
from records import (RecordError, THINK_SUFFIX, check_record, has_image, image_path, load_records, record_id, task_of,
                     validate_record)

N_NAMED = 5  # bad records named by id, with their problem, where a count of them is reported


def open_records(source, split="train", n=None, image_size=128, tasks=None, scored=False, strict=False, mix=""):
    """A list-like of records: "synthetic" (n records of the generated chest X-ray world's `split`, images made on
    access), "shapes" (the general world's, shapes.py) or a RadVLM/LLaVA .json/.jsonl file, read whole; only those
    of `tasks` (all when None; a file record without a "task" field counts as a report). `mix` ("task=weight,...",
    synthetic.parse_mix) weighs the synthetic world's tasks, one per study, instead of its DEFAULT_MIX.

    A file's records are checked as they are read (records.check_record: well formed, the image file there, a gold
    answer to learn from, or to score answers against where they are `scored`): the bad ones are skipped, counted and
    the first few named, or, `strict`, the first one raises RecordError; so does a file of which none can be used."""
    if source == "synthetic":
        import synthetic
        return synthetic.SyntheticRecords(split, n, size=image_size, tasks=tasks, mix=synthetic.parse_mix(mix))
    if mix:
        raise ValueError(f"a task mix ({mix!r}) applies to the synthetic world; {source}'s records are what they are")
    if source == "shapes":
        import shapes
        return shapes.ShapeRecords(split, n, size=image_size, tasks=tasks)
    loaded = load_records(source)
    if not loaded:
        raise RecordError(f"{source} holds no records")
    records = [(i, r) for i, r in enumerate(loaded) if tasks is None or not isinstance(r, dict) or task_of(r) in tasks]
    usable, problems = [], []
    for i, record in records:
        try:
            check_record(record, i, scored)
        except RecordError as e:
            if strict:
                raise
            problems.append(str(e))
        else:
            usable.append(record)
    kind = "/".join(tasks) + " " if tasks else ""
    named = "".join(f"\n  skipped {p}" for p in problems[:N_NAMED])
    named += f"\n  and {len(problems) - N_NAMED} more" if len(problems) > N_NAMED else ""
    if not usable and problems:
        raise RecordError(f"none of the {len(records)} {kind}records of {source} can be used:{named}")
    if problems:
        print0(f"{source}: skipped {len(problems)} of {len(records)} {kind}records:{named}")
    return usable


def tiny_corpus():
    """The texts the tiny model's tokenizer is trained on (model.load_model("tiny", tiny_corpus=...)): the chest X-ray
    world's and the general world's, so that one vocabulary serves the general model, the SFT model made from it and
    every stage after them."""
    import shapes
    import synthetic
    return synthetic.corpus_texts() + shapes.corpus_texts()



# ----------------------------------------------------------------------------------------------------
# from records to model inputs

def load_image(record, index=None):
    """The record's image as 8-bit RGB: in-memory arrays (synthetic world), PNG/JPG (8- or 16-bit), DICOM."""
    rid = record_id(record, index)
    if record.get("image_array") is not None:
        array = np.asarray(record["image_array"])
    else:
        path = image_path(record, index)
        try:
            if path.lower().endswith((".dcm", ".dicom")):
                array = read_dicom(path)
            else:
                with Image.open(path) as img:
                    img.load()
                    array = (np.asarray(img) if img.mode in ("I;16", "I;16B", "I", "F")
                             else np.asarray(img.convert("RGB")))
        except RecordError:
            raise
        except Exception as e:
            raise RecordError(f"record {rid}: cannot read image {path} ({type(e).__name__}: {e})") from None
    if array.dtype != np.uint8:  # 16-bit PNGs and DICOM pixel data: stretch the used range to 8 bits
        array = array.astype(np.float64)
        lo, hi = float(array.min()), float(array.max())
        array = ((array - lo) / max(hi - lo, 1e-6) * 255).round().astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array[..., :3])


def read_dicom(path):
    """A DICOM radiograph as 8-bit grayscale: modality LUT (rescale slope/intercept), then the file's VOI LUT
    or window, stretched to 0-255; MONOCHROME1 (bright = low values) inverted so that bone is white."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise RecordError(f"{path}: reading DICOM needs the optional package pydicom (pip install pydicom)") from None
    ds = pydicom.dcmread(path)
    pixels = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    pixels = (pixels - pixels.min()) / max(pixels.max() - pixels.min(), 1e-9)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = 1.0 - pixels
    return np.round(pixels * 255).astype(np.uint8)


def to_messages(record, thinking=False):
    """RadVLM/LLaVA conversations -> chat messages; `thinking` adds the paper's " /think" to the first question."""
    messages = []
    for i, turn in enumerate(record["conversations"]):
        text = turn["value"]
        if turn["from"] == "human":
            if i == 0 and thinking:
                text += THINK_SUFFIX
            if "<image>" in text:
                content = [{"type": "image"}, {"type": "text", "text": text.replace("<image>", "").strip()}]
            else:
                content = [{"type": "text", "text": text}]
            messages.append({"role": "user", "content": content})
        else:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": text.strip()}]})
    return messages


def prompt_messages(record, thinking=False):
    """The messages up to (without) the last answer: what the model sees when asked to generate it."""
    return to_messages(record, thinking)[:-1]




def prompt_batch(records, processor, thinking=False):
    """Left-padded model inputs of the records' prompts (everything before the last answer) for generate."""
    texts = [processor.apply_chat_template(prompt_messages(r, thinking), tokenize=False, add_generation_prompt=True)
             for r in records]
    images = [load_image(r, i) for i, r in enumerate(records) if has_image(r)]
    if images and len(images) != len(records):
        raise RecordError("a generation batch mixes records with and without images; batch them separately")
    return processor(text=texts, images=images or None, return_tensors="pt", padding=True, padding_side="left")


def generation_kwargs(tokenizer):
    """Stop at <|im_end|> (or <|endoftext|>), pad with <|endoftext|>, and never sample another special token:
    a generated <|image_pad|> would be read as an image slot when the sequence is fed back."""
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    return {"eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id,
            "suppress_tokens": [i for i in tokenizer.all_special_ids if i not in eos]}


@functools.lru_cache(maxsize=8)
def _assistant_header(tokenizer):  # once per tokenizer, not once per sample
    return (tokenizer.convert_tokens_to_ids("<|im_start|>"),
            tokenizer("assistant\n", add_special_tokens=False)["input_ids"])


def assistant_labels(input_ids, tokenizer):
    """Labels = input_ids on every assistant answer and its closing <|im_end|>, -100 elsewhere.

    Found on the token ids (after each `<|im_start|>assistant\\n`, up to and including the next
    `<|im_end|>`), so it works with any Qwen chat template, also ones without {% generation %} markers.
    """
    im_start, header = _assistant_header(tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = input_ids.tolist()
    labels = torch.full_like(input_ids, -100)
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == im_start and ids[i + 1:i + 1 + len(header)] == header:
            start = i + 1 + len(header)
            end = start
            while end < n and ids[end] != im_end:
                end += 1
            labels[start:end + 1] = input_ids[start:end + 1]  # the answer and its EOS; a cut-off answer has none
            i = end
        i += 1
    return labels


def tokenize_sample(record, processor, max_tokens=None, thinking=False, index=None):
    """One record -> model inputs of one sample (1-D tensors), labels on the assistant turns only.

    Raises RecordError naming the record for a missing/corrupt image, a malformed record, or more tokens than
    `max_tokens` (never truncated: a cut through the image tokens would break the model's image alignment).
    """
    validate_record(record, index)
    rid = record_id(record, index)
    messages = to_messages(record, thinking)
    text = processor.apply_chat_template(messages, tokenize=False)
    images = [load_image(record, index)] if has_image(record) else None
    enc = processor(text=[text], images=images, return_tensors="pt")
    input_ids = enc["input_ids"][0]
    if max_tokens is not None and len(input_ids) > max_tokens:
        raise RecordError(f"record {rid}: {len(input_ids)} tokens is more than max_tokens={max_tokens}")
    labels = assistant_labels(input_ids, processor.tokenizer)
    if not (labels != -100).any():
        raise RecordError(f"record {rid}: no assistant answer to learn from")
    sample = {"id": rid, "input_ids": input_ids, "labels": labels, "mm_token_type_ids": enc["mm_token_type_ids"][0]}
    if images:
        sample["pixel_values"], sample["image_grid_thw"] = enc["pixel_values"], enc["image_grid_thw"]
    return sample


def image_filler(processor):
    """The smallest image as a sample with no labels. pack_samples appends it to rows without an image, so
    that every rank runs the vision tower in every step (FSDP2's collectives must stay in step)."""
    side = max(32, int(math.ceil(math.sqrt(processor.image_processor.size["shortest_edge"]) / 32) * 32))
    text = "<|vision_start|><|image_pad|><|vision_end|>"
    enc = processor(text=[text], images=[Image.fromarray(np.zeros((side, side, 3), np.uint8))], return_tensors="pt")
    ids = enc["input_ids"][0]
    return {"id": "image-filler", "input_ids": ids, "labels": ids.new_full(ids.shape, -100),
            "mm_token_type_ids": enc["mm_token_type_ids"][0], "pixel_values": enc["pixel_values"],
            "image_grid_thw": enc["image_grid_thw"]}


def best_fit(lengths, capacity):
    """Best-fit decreasing bin packing: lists of indices whose lengths sum to <= capacity."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins, free = [], []
    for i in order:
        fits = [b for b in range(len(bins)) if free[b] >= lengths[i]]
        if fits:
            b = min(fits, key=lambda b: free[b])
            bins[b].append(i)
            free[b] -= lengths[i]
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


def pack_samples(samples, model, max_tokens, filler=None):
    """Pack whole samples into rows of at most `max_tokens` tokens (padding-free SFT).

    Each row is one sequence holding several samples back to back. What keeps them apart, with sdpa/eager
    and `attention_mask=None, use_cache=False` in the forward (docs/engineering.md, "Packing (padding-free SFT)
    with M-RoPE"):
    position_ids of shape (4, 1, L): row 0 restarts at 0 for every sample (transformers turns these resets
    into a block-diagonal mask, or varlen cu_seqlens with flash-attention), rows 1-3 are each sample's own
    M-RoPE (t, h, w) positions from get_rope_index, so image tokens keep their 2-D positions.
    The first label of each sample is masked (it would be predicted from the previous sample).
    Samples longer than a row are not packed; they come back in `too_long` to be counted, never cut.
    Returns (rows, too_long).
    """
    filler_len = len(filler["input_ids"]) if filler else 0
    fitting = [s for s in samples if len(s["input_ids"]) + filler_len <= max_tokens]
    too_long = [s for s in samples if len(s["input_ids"]) + filler_len > max_tokens]
    has_image = [("pixel_values" in s) for s in fitting]
    bins = best_fit([len(s["input_ids"]) for s in fitting], max_tokens - filler_len)
    rows = []
    for members in bins:
        parts = [fitting[i] for i in members]
        if filler is not None and not any(has_image[i] for i in members):
            parts.append(filler)
        rows.append(_concat_samples(parts, model))
    return rows, too_long


def _concat_samples(parts, model):
    positions, labels = [], []
    for s in parts:
        rope, _ = model.model.get_rope_index(s["input_ids"][None], s["mm_token_type_ids"][None],
                                             image_grid_thw=s.get("image_grid_thw"))
        text_pos = torch.arange(len(s["input_ids"]))[None, None]
        positions.append(torch.cat([text_pos, rope], dim=0))
        sample_labels = s["labels"].clone()
        sample_labels[0] = -100
        labels.append(sample_labels)
    row = {"input_ids": torch.cat([s["input_ids"] for s in parts])[None],
           "labels": torch.cat(labels)[None],
           "mm_token_type_ids": torch.cat([s["mm_token_type_ids"] for s in parts])[None],
           "position_ids": torch.cat(positions, dim=2),
           "ids": [s["id"] for s in parts if s["id"] != "image-filler"]}
    with_image = [s for s in parts if "pixel_values" in s]
    if with_image:
        row["pixel_values"] = torch.cat([s["pixel_values"] for s in with_image])
        row["image_grid_thw"] = torch.cat([s["image_grid_thw"] for s in with_image])
    return row


def model_inputs(row):
    """The keyword arguments of a packed row for the model's forward (the packing-safe call)."""
    keys = ("input_ids", "mm_token_type_ids", "position_ids", "pixel_values", "image_grid_thw")
    return {k: row[k] for k in keys if k in row} | {"attention_mask": None, "use_cache": False}


# ----------------------------------------------------------------------------------------------------
# the training stream: shuffled, rank-sharded, tokenized in background workers, packed, resumable

def epoch_order(n, seed, epoch):
    """A deterministic permutation of range(n) for this epoch, the same on every rank."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def tokenize_window(records, indices, processor, max_tokens, strict=False, thinking=False):
    """Tokenize records[indices]; bad records raise (strict) or come back as messages naming them."""
    samples, problems = [], []
    for i in indices:
        try:
            samples.append(tokenize_sample(records[i], processor, max_tokens=max_tokens, thinking=thinking, index=i))
        except RecordError as e:
            if strict:
                raise
            problems.append(str(e))
    return samples, problems


class PackedWindows:
    """This rank's training rows, window by window, in a fixed order that resumes exactly.

    Each epoch's shuffled order is sharded across ranks; a rank's shard is cut into windows of `window`
    records, each window tokenized and best-fit packed into rows. `num_workers` background threads build the
    next windows while the current one trains (image decoding, resizing and tokenization release the GIL) and
    hand them over in order, so the stream is the same for any number of them. Threads, not processes: a
    window crosses no process boundary, so nothing goes through shared memory, which containers cap at 64 MB
    (one window of the synthetic default holds 100 MB of pixel values, at the paper's settings ~1.6 GB).
    Yields {"epoch", "window", "rows", "problems"}; start at `start=(epoch, window)`.
    """

    def __init__(self, records, processor, model, max_tokens, window=64, rank=0, world=1, seed=0, start=(0, 0),
                 strict=False, thinking=False, num_workers=0):
        self.records, self.processor, self.model, self.max_tokens = records, processor, model, max_tokens
        self.window, self.rank, self.world, self.seed, self.start = window, rank, world, seed, tuple(start)
        self.strict, self.thinking, self.num_workers = strict, thinking, num_workers
        self.n_windows = math.ceil(len(records) / world / window)
        self.filler = image_filler(processor)

    def build(self, g):
        """Window g, counted across epochs."""
        epoch, w = divmod(g, self.n_windows)
        mine = epoch_order(len(self.records), self.seed, epoch)[self.rank::self.world]
        samples, problems = tokenize_window(self.records, mine[w * self.window:(w + 1) * self.window], self.processor,
                                            self.max_tokens - len(self.filler["input_ids"]), self.strict, self.thinking)
        rows, _ = pack_samples(samples, self.model, self.max_tokens, self.filler)
        return {"epoch": epoch, "window": w, "rows": rows, "problems": problems}

    def __iter__(self):
        g = self.start[0] * self.n_windows + self.start[1]
        if not self.num_workers:
            while True:
                yield self.build(g)
                g += 1
        pool, ahead = ThreadPoolExecutor(self.num_workers), deque()
        try:
            while True:
                while len(ahead) < 2 * self.num_workers:  # keep every thread busy with the windows that come next
                    ahead.append(pool.submit(self.build, g))
                    g += 1
                yield ahead.popleft().result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    import sys
    commands = {"synth": "synthetic", "convert": "converters"}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit("usage: python data.py synth ... | python data.py convert DATASET --root DIR --out FILE.jsonl")
    __import__(commands[sys.argv[1]]).main(sys.argv[2:])
