# Sourced by SLURM batch scripts. run_requeueing CMD...: runs CMD (the srun of a training step) and, when
# it stopped early on request with a checkpoint saved (exit code 75: --exit-signal-handler answered the
# SIGTERM that `#SBATCH --signal` sends ahead of the time limit, or --exit-duration-in-mins ran out),
# requeues the job; started again, it resumes from that checkpoint (--load). A preempted job is
# requeued by SLURM itself (--requeue); its SIGTERM makes the same save, which must fit in the
# partition's GraceTime (plus KillWait, 30 s by default): one iteration and one checkpoint save.
run_requeueing() {
  local status=0
  "$@" || status=$?
  if [[ $status == 75 && -n "${SLURM_JOB_ID:-}" ]]; then
    echo "stopped early with a checkpoint saved: requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID" || echo "scontrol requeue $SLURM_JOB_ID failed: resubmit the job" >&2
  fi
  return "$status"
}
