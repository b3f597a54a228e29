# The paper's stage 1 ("RadVLM"): full fine-tune of Qwen3-VL-8B-Instruct on the multi-task CXR instructions, one epoch,
# no validation set: the stages after it start from out_dir's latest step (runs/paper.sh, stage 3).
#   torchrun --nproc_per_node=8 sft.py config/sft_paper.py --resume=True
init_from = "Qwen/Qwen3-VL-8B-Instruct"
data = "data/radvlm_train.jsonl"  # runs/paper.sh: every converted train file (or the authors' instruction records)
val_data = ""
min_pixels = 1024
max_pixels = 262144           # 512 x 512: at most 256 visual tokens per image
max_tokens = 8192             # tokens per packed row
rows_per_step = 2             # x 8 GPUs x ~20 samples per row ~ 320 samples per step
epochs = 1
max_steps = 0                 # from the data: one epoch
lr = 1e-5
vision_lr = 1e-5              # the paper trains everything with one learning rate
warmup = 0.1
weight_decay = 0.0
beta1, beta2 = 0.9, 0.999
grad_clip = 1.0
grad_checkpointing = True
out_dir = "out/paper/sft"
save_every = 1000
eval_every = 1000
window = 256
num_workers = 4
