# The paper's stage 2 on GPUs: RadVLM (config/sft_paper.py's out_dir, its latest step) fine-tuned on the teacher's
# reasoning traces, with the SFT recipe of config/sft_paper.py (the paper gives no separate cold-start settings), one
# epoch of the traces (runs/paper.sh, stage 4):
#   torchrun --nproc_per_node=8 coldstart.py --teacher=Qwen/Qwen3-VL-32B-Instruct --data=data/radvlm_train.jsonl \
#       --out_dir=out/paper/coldstart
#   torchrun --nproc_per_node=8 sft.py config/coldstart_paper.py --resume=True
exec(open("config/sft_paper.py").read())
init_from = "out/paper/sft"
data = "out/paper/coldstart/coldstart.jsonl"
out_dir = "out/paper/sft_thinking"
max_tokens = 16384            # a trace of ~300 words comes before each answer
save_every = 200
