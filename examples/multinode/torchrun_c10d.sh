#!/usr/bin/env bash
# Two (or more) nodes with torchrun's c10d rendezvous: run this same script on every node.
#
#   node0$ MASTER=node0 NNODES=2 NPROC=4 bash examples/multinode/torchrun_c10d.sh
#   node1$ MASTER=node0 NNODES=2 NPROC=4 bash examples/multinode/torchrun_c10d.sh
#
# MASTER is a host every node can reach (it hosts the rendezvous store on PORT); ranks are numbered
# node by node, so `hsdp` shards inside each node and only all-reduces gradients across nodes.
# Needs: the same code, venv and data path on every node, and OUT on a shared filesystem
# (each rank writes its own checkpoint shard into OUT/checkpoints/step_N/dcp/).
set -euo pipefail

MASTER=${MASTER:?set MASTER to the rendezvous host, e.g. node0}
PORT=${PORT:-29500}
NNODES=${NNODES:-2}
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
OUT=${OUT:-runs/multinode}
PRESET=${PRESET:-llama-125m}
STRATEGY=${STRATEGY:-hsdp}

# --max_restarts: one rendezvous store per restart attempt (see pytorch/pytorch#135712)
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
# Plain Ethernet between nodes (no InfiniBand): let NCCL use TCP on the right interface.
# export NCCL_IB_DISABLE=1 NCCL_SOCKET_IFNAME=eth0 GLOO_SOCKET_IFNAME=eth0
# Consumer GPUs whose peer-to-peer copies hang or return wrong data (see `banyan bench comm`):
# export NCCL_P2P_DISABLE=1

exec torchrun \
  --nnodes="$NNODES" --nproc_per_node="$NPROC" \
  --rdzv_backend=c10d --rdzv_endpoint="$MASTER:$PORT" --rdzv_id="banyan-$(basename "$OUT")" \
  --max_restarts=3 \
  -m banyan pretrain --preset "$PRESET" --parallel.strategy "$STRATEGY" --out "$OUT" "$@"
