# The paper's GRPO run for grounding: as the report run, with the soft-F1 IoU reward and 4096-token answers, on the
# four grounding train files in one (runs/paper.sh, stage 5):
#   torchrun --nproc_per_node=8 grpo.py config/grpo_grounding_paper.py --resume=True
exec(open("config/grpo_report_paper.py").read())
task = "grounding"
data = "data/grounding_train.jsonl"
max_new_tokens = 4096
# micro_batch stays 8: without full logits (chunked log-probs) the training phase peaks below generation's
# (bench/memory_table.py: 8B on 8 GPUs, 56 GiB either way; it was 2 while B x 4096 x vocab logits were held)
generate_batch = 4            # prompts per generate call per GPU: 4,096-token answers' KV cache
max_steps = 600               # the paper trains 10 epochs of its grounding prompts; set from your data size
out_dir = "out/paper/grpo_grounding"
