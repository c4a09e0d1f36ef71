# Sourced by the launch scripts: each SODA size's layout on nodes of 8 x 80 GB GPUs.
# Memory per GPU is pretrain --dry-run's estimate for that layout with --bf16 and the distributed
# optimizer (WORLD_SIZE=8); micro-batches are the largest power of two that leaves a margin.
soda_size() {
  case "$1" in
    135m) MODEL=soda-135m TP=1 PP=1 MICRO_BATCH=8 MEMORY_GIB=41.5 ;;
    600m) MODEL=soda-600m TP=1 PP=1 MICRO_BATCH=4 MEMORY_GIB=44.8 ;;
    1.7b) MODEL=soda-1.7b TP=1 PP=1 MICRO_BATCH=2 MEMORY_GIB=42.2 ;;
    4b) MODEL=soda-4b TP=1 PP=1 MICRO_BATCH=1 MEMORY_GIB=55.5 ;;
    *)
      echo "SIZE must be one of 135m, 600m, 1.7b, 4b (got '$1')" >&2
      return 2
      ;;
  esac
}

# The flags every pretraining launch shares: SODA's recipe comes with --model; resume from $OUT/ckpt,
# and on SIGTERM (preemption, a time limit) save there and exit with code 75; keep the newest 3 checkpoints
# (KEEP_LATEST) and every 10,000th (KEEP_INTERVAL).
pretrain_flags() {
  PRETRAIN_FLAGS=(
    --model "$MODEL" --data-path $DATA
    --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP" --micro-batch-size "$MICRO_BATCH"
    --bf16 --use-distributed-optimizer --overlap-grad-reduce
    --save "$OUT/ckpt" --load "$OUT/ckpt" --save-interval "${SAVE_INTERVAL:-1000}" --exit-signal-handler
    --save-keep-latest "${KEEP_LATEST:-3}" --save-keep-interval "${KEEP_INTERVAL:-10000}"
    --eval-interval "${EVAL_INTERVAL:-1000}" --split "${SPLIT:-998,2,0}" --log-interval 10
    --tensorboard-dir "$OUT/tensorboard" --metrics-file "$OUT/metrics.jsonl"
  )
  if [[ -n "${TOKENIZER:-}" ]]; then PRETRAIN_FLAGS+=(--tokenizer "$TOKENIZER"); fi
}
