#!/usr/bin/env bash
# Every lab experiment on Fashion-MNIST, as measured for docs/lab.md (2-core CPU, about
# an hour in all). Run it alone: the budgets become epochs from a timing probe, so a
# busy machine gives fewer epochs. Rerunning continues a stopped lab; a finished one is
# kept. Then `python bench/lab_collect.py` writes the results section of docs/lab.md.
#   bash bench/lab_fashion_mnist.sh [OUT]          (default runs/lab)
#   ONLY="norm init" bash bench/lab_fashion_mnist.sh
set -euo pipefail
out=${1:-runs/lab}
cnnlab=${CNNLAB:-cnnlab}
run() {  # NAME ARGS...
    local name=$1; shift
    if [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]]; then return; fi
    echo "== $name: $cnnlab lab run $name $* --out $out/$name"
    "$cnnlab" lab run "$name" "$@" --out "$out/$name" --quiet
}
run norm       --train-subset 10000 --seeds 3 --budget 7m
# the regularisers need a net that overfits: a 3,000-image subset, seen many times
run dropout    --train-subset 3000 --seeds 3 --budget 5m
# the deep plain nets (10 convs at full 28x28 resolution) at half width: at width 32 an
# epoch of 10,000 images takes ~70 s here. Epochs, not a budget: without norm layers they
# need a few hundred steps to leave the initial plateau (2 epochs of batch 128 left every
# arm at chance), so batch 64 and 6 epochs
run activation --train-subset 5000 --seeds 3 --model-opt width=16 --batch-size 64 --epochs 6
run kernels    --train-subset 5000 --seeds 3 --budget 6m
run init       --train-subset 5000 --seeds 3 --model-opt width=16 --batch-size 64 --epochs 6
run preprocess --train-subset 10000 --seeds 3 --budget 5m
run augment    --train-subset 3000 --seeds 3 --budget 8m
# the CIFAR nets at half width (8/16/32 channels): ResNet-56 at full width trains at
# about 100 images/s on 2 cores. Epochs: the training-error curves are the result
run depth      --train-subset 5000 --seeds 1 --model-opt width=8 --epochs 10
# epochs, not a budget: the arms differ a hundredfold in cost (cached features vs fine-tuning
# at 64 px), and a budget sized by the slowest arm would give the cheap ones 2-3 epochs
run transfer   --seeds 1 --epochs 10
