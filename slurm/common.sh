# Sourced by the slurm/*.sbatch templates after their #SBATCH header; see slurm/README.md.
#
# Environment (all optional; sbatch exports the submitting shell's environment):
#   NVC_CONFIG    LightningCLI preset, relative to the submit dir (each template sets a default)
#   NVC_RUN_ROOT  where run folders go (default: $SLURM_SUBMIT_DIR/runs/slurm)
#   NVC_RUN_DIR   one exact run folder (default: $NVC_RUN_ROOT/<job name>-<job id>[_<array task>])
#   NVC_VENV      virtualenv to activate (default: $SLURM_SUBMIT_DIR/.venv)
#   NVC_MODULES   environment modules to `module load` first, e.g. "cuda/12.4 python/3.11"
# Arguments of nvc_train_fit go to `nvc-train fit` after the template's own.

nvc_train_fit() {
    cd "$SLURM_SUBMIT_DIR"
    local config
    config=$(realpath -e "$NVC_CONFIG")  # absolute: the job runs inside the run folder

    # One folder per job (per array task), the same on every requeue: the job id survives a
    # requeue and Lightning looks for hpc_ckpt_*.ckpt in default_root_dir, relative to it.
    local run_id=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
    run_id=${run_id:-$SLURM_JOB_ID}
    local run_dir=${NVC_RUN_DIR:-${NVC_RUN_ROOT:-$SLURM_SUBMIT_DIR/runs/slurm}/${SLURM_JOB_NAME}-${run_id}}
    mkdir -p "$run_dir"
    echo "nvc-train: run folder $run_dir, log $run_dir/slurm.log"
    exec >>"$run_dir/slurm.log" 2>&1
    echo "=== $(date -Is) job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} on $(hostname): ${SLURM_NNODES} node(s) x ${SLURM_NTASKS_PER_NODE} task(s)"

    if [[ -n ${NVC_MODULES:-} ]]; then
        module load $NVC_MODULES  # word splitting wanted: a list of modules
    fi
    # shellcheck disable=SC1091
    source "${NVC_VENV:-$SLURM_SUBMIT_DIR/.venv}/bin/activate"

    # One W&B run across requeues: the id is drawn once and kept in the run folder (the
    # cluster name and a random suffix keep job ids of different clusters apart).
    if [[ ! -s $run_dir/wandb-run-id ]]; then
        echo "${SLURM_CLUSTER_NAME:-slurm}-${run_id}-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')" >"$run_dir/wandb-run-id"
    fi
    WANDB_RUN_ID=$(<"$run_dir/wandb-run-id")
    export WANDB_RUN_ID WANDB_RESUME=allow
    export PYTHONUNBUFFERED=1
    # One thread pool per task, sized to its CPUs (torch would otherwise use every core per task).
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

    # The preset's relative paths (default_root_dir, checkpoints, W&B) land in the run folder.
    cd "$run_dir"
    # srun starts one task per device; Lightning reads its rank from SLURM_PROCID/LOCALID/NODEID,
    # resumes from the newest hpc_ckpt_*.ckpt and on SIGUSR1 saves one and requeues the job.
    srun --kill-on-bad-exit=1 nvc-train fit --config "$config" \
        --trainer.strategy ddp --trainer.num_nodes "$SLURM_NNODES" --trainer.devices "$SLURM_NTASKS_PER_NODE" "$@"
}
