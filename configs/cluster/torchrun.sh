#!/bin/bash
# anomaly-zoo on one machine with several GPUs, launched by torchrun (one process per GPU).
#   bash configs/cluster/torchrun.sh 4 --config configs/uniad/mvtec_ad.yaml --data.init_args.root /data/mvtec_ad
# Lightning detects the torchrun environment and joins its process group; the same command without torchrun,
#   anomaly-zoo fit ... --trainer.devices 4 --trainer.strategy ddp
# lets Lightning start the processes itself. Resume an interrupted run: add --ckpt_path last.
set -euo pipefail
NPROC=${1:?number of processes (GPUs)}; shift
exec torchrun --standalone --nproc_per_node "$NPROC" "$(command -v anomaly-zoo)" fit \
    --trainer.devices "$NPROC" --trainer.strategy ddp "$@"
