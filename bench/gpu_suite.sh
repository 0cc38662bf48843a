#!/usr/bin/env bash
# Every accelerator measurement in one short run (a lent GPU is held by the minute).
#
#   bash bench/gpu_suite.sh [OUT_DIR]        (default bench/results/gpu; PYTHON=python3)
#
# Pass 1 compiles every benchmark's programs in parallel processes into a persistent JAX
# compilation cache (their timings are discarded); pass 2 runs the benchmarks one at a time,
# each program now loaded from the cache, PyTorch on the same GPU (bench/common.py):
#   seeds.json      N = 4 PCMelGAN seeds in one program (vmap) vs 4 sequential runs,
#                   b 16/32/128
#   train.json      train-step throughput per stage, JAX vs PyTorch, batch 16/128
#   train_bf16.json the pcmelgan stage with bfloat16 compute (JAX)
#   anonymize.json  anonymisation real-time factor, JAX vs PyTorch
#   grouped_conv.json  the MelGAN discriminator's grouped convolutions, two formulations
# The accelerator tests (tests/test_gpu.py, tests/test_mixed_precision.py incl. slow) run
# during pass 1 (log: OUT_DIR/tests.log).
# Everything printed goes to OUT_DIR/suite.log too. Every command has a time limit (seconds:
# LIMIT_COMPILE for each pass-1 process, LIMIT_STEP for each pass-2 benchmark), so that one
# slow compilation cannot use up a lease; a command that hits its limit is reported and the
# suite goes on.
set -u
out=${1:-bench/results/gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
exec > >(tee -a "$out/suite.log") 2>&1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/pcmelgan_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
REPEATS=${REPEATS:-20}
LIMIT_COMPILE=${LIMIT_COMPILE:-360}
LIMIT_STEP=${LIMIT_STEP:-150}
say() { echo "[$(date +%T)] $*"; }

say "environment"
nvidia-smi -L
$py -c "import jax, flax, optax, numpy, torch, librosa; print('jax', jax.__version__,
jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'numpy',
numpy.__version__, 'torch', torch.__version__, torch.cuda.is_available(), 'librosa',
librosa.__version__)" || exit 1

say "pass 1: compiling in parallel"
# a GPU memory cap per process (8 processes: the vocoder's 25 %, the others' 9 % each):
# uncapped, XLA's autotuner asked for 33 GiB in each of five processes on an 80 GB H100 and
# two of them ran out of GPU memory (bench/measured/nvidia-h100)
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.09
warm=$(mktemp -d)
pids=()
for stage in classifier vocoder pcmelgan; do
  fraction=$([ $stage = vocoder ] && echo 0.25 || echo 0.09)
  XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction timeout "$LIMIT_COMPILE" $py -m bench.bench_train \
    --only $stage --batch-sizes 16,128 --repeats 1 --no-torch \
    --out "$warm/train_$stage.json" > "$warm/train_$stage.log" 2>&1 & pids+=($!)
done
timeout "$LIMIT_COMPILE" $py -m bench.bench_train --only pcmelgan --batch-sizes 16,128 \
  --repeats 1 --no-torch --dtype bfloat16 --out "$warm/bf16.json" > "$warm/bf16.log" 2>&1 &
pids+=($!)
for b in 16 32 128; do
  timeout "$LIMIT_COMPILE" $py -m bench.bench_seeds --num-seeds 4 --batch-size $b \
    --strategies vmap --repeats 1 --out "$warm/seeds_$b.json" > "$warm/seeds_$b.log" 2>&1 &
  pids+=($!)
done
# the accelerator tests meanwhile (their timing does not matter)
timeout "$LIMIT_COMPILE" $py -m pytest -q -p no:cacheprovider -m "gpu or slow or not slow" \
  tests/test_gpu.py tests/test_mixed_precision.py > "$warm/tests.log" 2>&1 & pids+=($!)
for p in "${pids[@]}"; do
  wait "$p"
  rc=$?
  [ "$rc" = 0 ] || say "a pass-1 process failed (rc $rc; 124: over LIMIT_COMPILE)"
done
for f in "$warm"/*.log; do echo "--- $f"; tail -n 4 "$f"; done
cp "$warm/tests.log" "$out/tests.log"
unset XLA_PYTHON_CLIENT_MEM_FRACTION
say "pass 1 done"

step() {
  timeout "$LIMIT_STEP" "$@"
  local rc=$?
  [ "$rc" = 0 ] || say "failed (rc $rc; 124: over LIMIT_STEP=${LIMIT_STEP} s): $*"
}
say "seeds"
step $py -m bench.bench_seeds --num-seeds 4 --batch-size 16,32,128 --strategies vmap \
  --repeats "$REPEATS" --out "$out/seeds.json"
say "train (float32, PyTorch on CUDA)"
step $py -m bench.bench_train --batch-sizes 16,128 --repeats "$REPEATS" --out "$out/train.json"
say "train (bfloat16 pcmelgan)"
step $py -m bench.bench_train --only pcmelgan --batch-sizes 16,128 --repeats "$REPEATS" \
  --no-torch --dtype bfloat16 --out "$out/train_bf16.json"
say "anonymize"
step $py bench/bench_anonymize.py --seconds 60 --clips 40 --repeats 3 \
  --out "$out/anonymize.json"
say "grouped convolutions: XLA vs patches + einsum"
step $py -m bench.bench_models --only grouped_conv --no-torch --batch-size 16 --repeats 10 \
  --out "$out/grouped_conv.json"
say "done"
