# The paper's stage 2 on GPUs: RadVLM fine-tuned on the teacher's reasoning traces (coldstart.py --teacher=...), with
# the SFT recipe of config/sft_paper.py (the paper gives no separate cold-start settings), one epoch of the traces.
#   torchrun --nproc_per_node=8 coldstart.py --teacher=Qwen3-VL-32B-Instruct --data=radvlm_train.jsonl
#   torchrun --nproc_per_node=8 sft.py config/coldstart_paper.py
exec(open("config/sft_paper.py").read())
init_from = "out/sft_paper"
data = "out/coldstart/coldstart.jsonl"
out_dir = "out/coldstart_paper"
max_tokens = 16384            # a trace of ~300 words comes before each answer
save_every = 200
