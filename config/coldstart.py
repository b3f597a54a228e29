# Stage 2's SFT ("RadVLM-Thinking"): the SFT model fine-tuned on the reasoning traces that coldstart.py wrote.
#   python coldstart.py && python sft.py config/coldstart.py        # CPU, the synthetic world, ~9 minutes
#   torchrun --nproc_per_node=8 sft.py config/coldstart.py --init_from=out/sft_paper --data=out/coldstart/coldstart.jsonl
init_from = "out/sft"
data = "out/coldstart/coldstart.jsonl"
val_data = ""
out_dir = "out/coldstart/model"
epochs = 4                    # one pass left the tiny model unable to close </think> (docs/results.md)
max_steps = 250               # or fewer, when the data ends first (reproduce.sh: about one pass over 2,897 traces
                              # beside 3,000 replayed SFT records)
lr = 1e-3
freeze_vision = True          # the traces teach a format, not seeing: a fixed tower keeps grounding as well as a
                              # trained one or better (docs/results.md), with no gradients or AdamW state for it
warmup = 0.05
eval_every = 100
save_every = 200
