#!/usr/bin/env bash
# runs/multinode.sh: one stage script on several nodes, with torchrun's own rendezvous (c10d). Start it once on every
# node, with the same settings; the nodes must share a filesystem (out_dir, data), as cluster nodes do.
#
#   NNODES=4 NPROC=8 MASTER_ADDR=node0 MASTER_PORT=29500 bash runs/multinode.sh grpo.py config/grpo_report_paper.py \
#       --init_from=out/paper/sft --data=data/mimic_train.jsonl --out_dir=out/paper/grpo_report --resume=True
#
# Under SLURM, a batch file starts it once per node with srun (SLURM_NNODES and SLURM_JOB_ID fill NNODES and the
# rendezvous id; the first node of the allocation hosts the rendezvous):
#
#   #!/bin/bash
#   #SBATCH --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 --cpus-per-task=64 --exclusive
#   export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1) MASTER_PORT=29500 NPROC=8
#   srun bash runs/multinode.sh grpo.py config/grpo_report_paper.py --out_dir=out/paper/grpo_report --resume=True
#
# Ranks: torchrun gives each node's processes LOCAL_RANK 0..NPROC-1 and global RANK 0..NNODES*NPROC-1; every file the
# stage scripts write (checkpoints, `latest`, logs, data files, merged evaluations, pictures) is written by global rank
# 0 alone, or by each rank under its own rank number. MAX_RESTARTS > 0 restarts every node's workers after a failure;
# they resume from the newest checkpoint that all ranks can read (--resume=True).
set -euo pipefail
cd "$(dirname "$0")/.."
NNODES=${NNODES:-${SLURM_NNODES:-1}}               # nodes taking part, each running this script once
NPROC=${NPROC:-8}                                  # processes (GPUs) per node
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}              # the node that hosts the rendezvous: one every node can reach
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-${SLURM_JOB_ID:-radvlm-grpo}}   # the same on every node of one job, different across jobs
MAX_RESTARTS=${MAX_RESTARTS:-0}
# restarted workers must not be handed the killed ones' store addresses, on which they hang (pytorch/pytorch#135712)
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
exec python -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$NPROC" --rdzv_backend=c10d \
    --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$RDZV_ID" --max-restarts="$MAX_RESTARTS" "$@"
