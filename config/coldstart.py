# Stage 2's SFT ("RadVLM-Thinking"): the SFT model fine-tuned on the reasoning traces that coldstart.py wrote.
#   python coldstart.py && python sft.py config/coldstart.py        # CPU, the synthetic world, ~3 minutes
#   torchrun --nproc_per_node=8 sft.py config/coldstart.py --init_from=out/sft_paper --data=out/coldstart/coldstart.jsonl
init_from = "out/sft"
data = "out/coldstart/coldstart.jsonl"
val_data = ""
out_dir = "out/coldstart/model"
max_steps = 400               # stops earlier at the end of the traces (one epoch)
lr = 1e-3
vision_lr = 5e-4
warmup = 0.05
eval_every = 100
save_every = 200
