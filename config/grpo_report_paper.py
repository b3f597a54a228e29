# The paper's GRPO run for report generation (verl settings: docs/paper.md, "GRPO settings"): 512 prompts x 8
# samples per step, 4 updates of 128 prompts, lr 1e-6, beta 0.01 (k3), clip 0.2/0.28, dual clip 3, token-mean,
# ~300 steps, from RadVLM (config/sft_paper.py's out_dir, its latest step), on MIMIC-CXR's train reports
# (runs/paper.sh, stage 5; with --thinking=True --init_from=out/paper/sft_thinking for RadVLM-Thinking + RL):
#   torchrun --nproc_per_node=8 grpo.py config/grpo_report_paper.py --metric_weights=W --resume=True
init_from = "out/paper/sft"
task = "report"
data = "data/mimic_train.jsonl"
val_data = ""                 # the paper holds no prompts out during RL: it evaluates the last step (a file: curves)
report_reward = "radcliq"     # needs --metric_weights=FOLDER, the local weights of its models (see scorers.py)
min_pixels = 1024
max_pixels = 451584           # 672 x 672
prompts_per_step = 512
group_size = 8
mini_batch = 128
micro_batch = 8
generate_batch = 8           # prompts per generate call per GPU: bounds the KV cache
grad_checkpointing = True
max_new_tokens = 1024         # 4096 with --thinking=True
temperature = 1.0
top_p = 1.0
lr = 1e-6
weight_decay = 0.01
grad_clip = 1.0
beta = 0.01
eps_low = 0.2
eps_high = 0.28
dual_clip = 3.0
loss_agg = "token-mean"
scale_std = True
max_steps = 300
save_every = 50
out_dir = "out/paper/grpo_report"
