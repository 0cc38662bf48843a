#!/usr/bin/env bash
# Every accelerator measurement in one short run (a lent GPU is held by the minute).
#
#   bash bench/gpu_suite.sh [OUT_DIR]        (default bench/results/gpu; PYTHON=python3)
#
# Steps, in this order of priority (STEPS="name ..." picks and orders a subset):
#   vocoder_parts  vocoder_parts.json + profile/: the vocoder step, G and D vs PyTorch,
#                  batch 128, and the step's device time per HLO op (bench_vocoder_parts)
#   train          train.json: train-step throughput per stage, JAX vs PyTorch, batch 16/128
#   loop           loop.json: the whole training loop (data, step, logging, checkpoints)
#                  against its jitted step alone, classifiers and vocoder (bench_loop)
#   seeds_16, seeds_32, seeds_128
#                  seeds_<b>.json: 4 PCMelGAN seeds in one program, vmapped and unrolled, vs
#                  4 sequential steps (what steps.VMAP_MAX_BATCH is set from)
#   tests          tests.log: tests/test_gpu.py and tests/test_mixed_precision.py, slow ones too
#   train_bf16     train_bf16.json: the pcmelgan stage with bfloat16 compute (JAX)
#   anonymize      anonymize.json: anonymisation real-time factor, JAX vs PyTorch
#   grouped_conv   grouped_conv.json: the discriminator's grouped convolutions, two forms
# One program compiles at a time: XLA's GPU autotuner times candidate kernels on the GPU, so
# parallel compiles slow each other down (docs/measurements.md). The persistent compilation
# cache stays on, so a second call on the same machine loads what the first compiled.
# Each step runs within LIMIT_STEP seconds (LIMIT_TESTS for the tests) and all within DEADLINE
# seconds of the start, so that the suite ends inside one device call; a step that would start
# with under 20 s left is skipped and reported. PACK=FILE.tgz packs OUT_DIR after every step
# (for a lease that returns few files). Everything printed goes to OUT_DIR/suite.log too.
set -u
out=${1:-bench/results/gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
exec > >(tee -a "$out/suite.log") 2>&1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/pcmelgan_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
REPEATS=${REPEATS:-10}
DEADLINE=${DEADLINE:-570}
LIMIT_STEP=${LIMIT_STEP:-180}
LIMIT_TESTS=${LIMIT_TESTS:-300}
STEPS=${STEPS:-vocoder_parts train loop seeds_16 seeds_32 seeds_128 tests train_bf16 \
anonymize grouped_conv}
start=$(date +%s)
say() { echo "[$(date +%T) +$(( $(date +%s) - start ))s] $*"; }
pack() { [ -z "${PACK:-}" ] || tar czf "$PACK" -C "$out" . 2>/dev/null; }

say "environment"
nvidia-smi -L
$py -c "import jax, flax, optax, numpy, torch, librosa; print('jax', jax.__version__,
jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'numpy',
numpy.__version__, 'torch', torch.__version__, torch.cuda.is_available(), 'librosa',
librosa.__version__)" || exit 1

run_step() {  # NAME LIMIT COMMAND...: runs COMMAND within min(LIMIT, time left)
  local name=$1 limit=$2
  shift 2
  local left=$(( DEADLINE - ($(date +%s) - start) ))
  if [ "$left" -lt 20 ]; then
    say "skipped $name: ${left}s left of DEADLINE=${DEADLINE}"
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  say "$name (limit ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  [ "$rc" = 0 ] || say "failed $name (rc $rc; 124: over its ${limit}s)"
  pack
}

for name in $STEPS; do
  case $name in
    vocoder_parts)
      run_step "$name" "$LIMIT_STEP" $py -m bench.bench_vocoder_parts --batch-size 128 \
        --repeats "$REPEATS" --only \
        step,generator,discriminator,log_mel,torch_step,torch_generator,torch_discriminator \
        --profile "$out/profile" --out "$out/vocoder_parts.json" ;;
    train)
      run_step "$name" "$LIMIT_STEP" $py -m bench.bench_train --batch-sizes 16,128 \
        --repeats "$REPEATS" --out "$out/train.json" ;;
    loop)
      run_step "$name" "$LIMIT_STEP" $py -m bench.bench_loop --stage classifiers \
        --stage vocoder --steps 100 --repeats 3 --out "$out/loop.json" ;;
    seeds_*)
      run_step "$name" "$LIMIT_STEP" $py -m bench.bench_seeds --num-seeds 4 \
        --batch-size "${name#seeds_}" --strategies vmap,unroll --repeats "$REPEATS" \
        --out "$out/$name.json" ;;
    tests)
      run_step "$name" "$LIMIT_TESTS" bash -c "$py -m pytest -q -p no:cacheprovider \
        -m 'gpu or slow or not slow' tests/test_gpu.py tests/test_mixed_precision.py \
        > '$out/tests.log' 2>&1; rc=\$?; tail -n 15 '$out/tests.log'; exit \$rc" ;;
    train_bf16)
      run_step "$name" "$LIMIT_STEP" $py -m bench.bench_train --only pcmelgan \
        --batch-sizes 16,128 --repeats "$REPEATS" --no-torch --dtype bfloat16 \
        --out "$out/train_bf16.json" ;;
    anonymize)
      run_step "$name" "$LIMIT_STEP" $py bench/bench_anonymize.py --seconds 60 --clips 40 \
        --repeats 3 --out "$out/anonymize.json" ;;
    grouped_conv)
      run_step "$name" "$LIMIT_STEP" $py -m bench.bench_models --only grouped_conv --no-torch \
        --batch-size 16 --repeats 10 --out "$out/grouped_conv.json" ;;
    *)
      say "unknown step $name" ;;
  esac
done
say "done"
pack
