#!/usr/bin/env bash
# The device check of --decode device (nvJPEG) and the streaming loader on a GPU, as one script (about 5 minutes).
#
# The GPU machine has torch, torchvision, pyarrow, pillow, rich, pyyaml and psutil, but not litdata or
# simplejpeg: carry them as wheels for its Python (3.12), made here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     litdata simplejpeg obstore boto3 botocore s3transfer jmespath
# (.whl ignored by git), then run `bash bench/gpu_check.sh` there with .whl carried. Results go to $OUT
# (or ./gpu-check): the card, the CUDA tests of the streaming path, and bench_stream.py's loaders at 224 px
# with every batch on the GPU: StreamLoader decoding on the CPU threads and on the GPU, against
# torchvision's ImageFolder + DataLoader with 8 and 16 workers.
set -uo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    nproc
    python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
    python3 -c "from cnnlab.data.stream import batch_jpeg_decoder as d; print('batched decoder:', d().__name__)"
} 2>&1 | tee "$out/machine.txt"
python3 -m pytest -q -s -p no:cacheprovider tests/data/test_stream.py -k "device_decoding" 2>&1 | tee "$out/pytest.txt"
work=$(mktemp -d)
python3 bench/make_jpeg_folder.py --n 8000 --out "$work/jpegs" >/dev/null
python3 bench/bench_stream.py loaders --folder "$work/jpegs" --work "$work/bench" --device cuda --batches 40 \
    --cases stream,stream-device,imagefolder-8,imagefolder-16,stream,stream-device \
    >"$out/loaders.json" 2>"$out/loaders.log"
cat "$out/loaders.log"
rm -rf "$work"
