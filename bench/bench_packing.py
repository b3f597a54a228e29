"""
Packing efficiency of the synthetic SFT mix: real tokens / row capacity, as sft.py packs them (windows of
`window` records, best-fit decreasing into rows of `max_tokens`, an image filler where a row has no image).

    python bench/bench_packing.py                    # the table in docs/data.md
    python bench/bench_packing.py --records=2048
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import synthetic  # noqa: E402
from configurator import configure  # noqa: E402
from data import image_filler, pack_samples, tokenize_window  # noqa: E402
from data import tiny_corpus  # noqa: E402
from model import build_tiny  # noqa: E402

records = 1024            # synthetic training records to pack
windows = [64, 256, 1024]  # records packed together
row_lengths = [1024, 2048, 4096]
configure(globals())

torch.set_num_threads(1)
model, processor = build_tiny(texts=tiny_corpus())
source = synthetic.SyntheticRecords("train", records)
t0 = time.time()
filler = image_filler(processor)
samples, _ = tokenize_window(source, range(records), processor, max(row_lengths) - len(filler["input_ids"]))
tokenize_s = time.time() - t0
lengths = [len(s["input_ids"]) for s in samples]
print(f"{records} records, {sum(lengths)} tokens, mean {sum(lengths) / len(lengths):.1f} / max {max(lengths)} "
      f"tokens per sample; tokenized at {records / tokenize_s:.0f} records/s on one core\n")
print("| row length | window | rows | packed: real tokens / capacity | padded batches: real / padded tokens |")
print("|---|---|---|---|---|")
for max_tokens in row_lengths:
    for window in windows:
        rows = []
        for start in range(0, records, window):
            rows += pack_samples(samples[start:start + window], model, max_tokens, filler)[0]
        capacity = len(rows) * max_tokens
        # the alternative: batches of a fixed number of samples (as many as fit at the longest length),
        # each padded to its longest sample
        per_batch = max(1, max_tokens // max(lengths))
        padded = sum(max(lengths[i:i + per_batch]) * len(lengths[i:i + per_batch])
                     for i in range(0, records, per_batch))
        print(f"| {max_tokens} | {window} | {len(rows)} | {100 * sum(lengths) / capacity:.1f} % | "
              f"{100 * sum(lengths) / padded:.1f} % |")
