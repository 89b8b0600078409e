# Sourced by the job scripts in jobs/ (not a job itself): runs the launcher line, forwards stop signals to it,
# and makes the job's exit code the one the ranks chose.
#
# Why: a launcher returns a code of its own whenever it ended the ranks or was itself signalled, not the code
# the ranks chose: srun --kill-on-bad-exit ends a step's other ranks as soon as one exits non-zero and returns
# their signal's code (143); Open MPI's mpiexec, itself sent SIGTERM, stops the ranks and returns 1
# (docs/slurm.md#exit-codes). Every rank writes the code it chose to
# $LANDSCAPE_MPI_EXIT_FILE before it exits; whenever the launcher returns anything but 0, that code is the job's.
#
# Source it before anything else (before ENV_SETUP), so that its traps hold from the start: SLURM may send the
# warning signal early, while the script is still setting up, and an untrapped SIGUSR1 kills the script.
#   landscape_launch CMD...   run CMD (the launcher line) and wait until it has really ended; sets
#                             LANDSCAPE_LAUNCHER_RC (what CMD returned) and LANDSCAPE_RC (the job's code)
#   LANDSCAPE_STOP_SIGNAL     the stop signal this script caught, if any

# the job script's first line may have trapped one already (while it looked for this file)
LANDSCAPE_STOP_SIGNAL=${LANDSCAPE_STOP_SIGNAL:-}
LANDSCAPE_LAUNCHER_PID=""
LANDSCAPE_LAUNCHER_RC=""
LANDSCAPE_RC=""

landscape_log() {
  echo "[$(date '+%F %T')] $*"
}

landscape_on_signal() {
  LANDSCAPE_STOP_SIGNAL=$1
  landscape_log "caught $1: the ranks finish their points in flight and write everything"
  if [ -n "$LANDSCAPE_LAUNCHER_PID" ]; then
    kill -USR1 "$LANDSCAPE_LAUNCHER_PID" 2>/dev/null  # srun and both mpiexecs forward SIGUSR1 to every rank
  fi
}
trap 'landscape_on_signal SIGUSR1' USR1
trap 'landscape_on_signal SIGTERM' TERM
trap 'landscape_on_signal SIGINT' INT

# Open MPI's mpiexec, itself sent SIGTERM or SIGINT, sends the ranks SIGCONT, sleeps odls_base_sigkill_timeout
# seconds (1 by default), sends SIGTERM, sleeps again, sends SIGKILL, and returns 1. A rank writes 75 as soon as it
# catches the signal, but the 1 s it gets is too short to end its batch and write its points: 3 s each (the job
# ends within 6 s of the signal; a failing rank's job also ends up to 6 s later). (OMPI_: Open MPI 4; PRTE_: 5.)
export OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout:-3}
export PRTE_MCA_odls_base_sigkill_timeout=${PRTE_MCA_odls_base_sigkill_timeout:-3}

landscape_launch() {
  # On the file system the submission folder is on, which every node of the job sees; one file per job.
  LANDSCAPE_MPI_EXIT_FILE="${SLURM_SUBMIT_DIR:-$PWD}/.landscape-job-${SLURM_JOB_ID:-$$}.exit"
  export LANDSCAPE_MPI_EXIT_FILE
  rm -f "$LANDSCAPE_MPI_EXIT_FILE"
  if [ -n "$LANDSCAPE_STOP_SIGNAL" ]; then
    LANDSCAPE_LAUNCHER_RC=75   # signalled before the launch: nothing started, nothing lost; rerun to resume
  else
    "$@" &
    LANDSCAPE_LAUNCHER_PID=$!
    # a signal between the launch and the line above found no pid to forward to: forward it now
    if [ -n "$LANDSCAPE_STOP_SIGNAL" ]; then kill -USR1 "$LANDSCAPE_LAUNCHER_PID" 2>/dev/null; fi
    # `wait` returns early when a trapped signal arrives: wait again until the launcher has really ended
    while :; do
      wait "$LANDSCAPE_LAUNCHER_PID"
      LANDSCAPE_LAUNCHER_RC=$?
      kill -0 "$LANDSCAPE_LAUNCHER_PID" 2>/dev/null || break
    done
    LANDSCAPE_LAUNCHER_PID=""
  fi
  LANDSCAPE_RC=$LANDSCAPE_LAUNCHER_RC
  local chosen
  chosen=$(cat "$LANDSCAPE_MPI_EXIT_FILE" 2>/dev/null)
  if [ "$LANDSCAPE_RC" != 0 ] && [ -n "$chosen" ] && [ -z "${chosen//[0-9]/}" ]; then
    if [ "$chosen" != "$LANDSCAPE_RC" ]; then
      landscape_log "the launcher returned $LANDSCAPE_RC; the ranks chose exit $chosen"
    fi
    LANDSCAPE_RC=$chosen
  elif [ "$LANDSCAPE_RC" != 0 ] && [ -n "$LANDSCAPE_STOP_SIGNAL" ]; then
    # killed before any rank chose (srun, itself sent SIGTERM, SIGKILLs the ranks at once): stopped by the
    # signal this script caught too, and the file is resumable whenever a rank is killed
    landscape_log "the launcher returned $LANDSCAPE_RC and no rank chose a code after $LANDSCAPE_STOP_SIGNAL: 75"
    LANDSCAPE_RC=75
  fi
  rm -f "$LANDSCAPE_MPI_EXIT_FILE"
  landscape_log "landscape-mpi exited with $LANDSCAPE_RC"
  return "$LANDSCAPE_RC"
}
