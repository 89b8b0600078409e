"""The life of every rank: start-up, stop signals, agree-or-fail steps, abort. One place for all of it.

The rules, which together mean that no rank is ever left waiting for one that failed:

1. Stop signals (SIGTERM, SIGINT, SIGUSR1) are caught from the first line of `main` on (`STOP.install()`),
   so a signal during set-up (loading a big checkpoint, say) is remembered, never fatal; the run checks the
   flag once set-up is done and between evaluation batches. The exit code goes to $LANDSCAPE_MPI_EXIT_FILE
   too (`note_exit`): 75 as soon as a stop signal is caught, then the code chosen at the end, for a job script
   whose launcher returns a code of its own (jobs/launch.sh).
2. Every set-up step where one rank can fail alone is an *agree-or-fail* step (`agree`): each rank runs it,
   the ranks exchange their outcome (one allgather), and if any failed, every rank raises the first failure.
   A user error then ends every rank with the same one line and exit code 2.
3. Anything else that escapes `main` on a job of more than one rank (an exception in the middle of a run,
   on any rank) is printed by the rank that failed as ``rank R: <message>`` and ends the whole job through
   `MPI_Abort` (`abort`), as ``python -m mpi4py`` does. The coordinator first writes every finished point.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import TypeVar

from landscape_mpi.config.errors import EXIT_FAILURE, EXIT_RESUMABLE, EXIT_USER_ERROR, UserError
from landscape_mpi.runtime.comm import SELF

T = TypeVar("T")


class StopRequested(Exception):
    """Raised between evaluation batches once a stop was asked for: the point in progress is abandoned (it is
    recomputed on resume) so that a job stops within one batch."""


class StopFlag:
    """Set by SIGTERM, SIGINT or SIGUSR1 (SLURM's warning signal): stop handing out work, abandon the point in
    progress at the next batch boundary, write every finished point, exit 75.

    A second SIGINT interrupts at once (KeyboardInterrupt), for an impatient Ctrl-C.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        if not self.requested or self.signal_name != name:
            # os.write, not print: the handler may interrupt a print of the main code (no re-entrant I/O)
            message = f"landscape-mpi: rank {world_rank()} caught {name}; stopping at the next batch boundary\n"
            try:
                os.write(2, message.encode())
            except OSError:
                pass
        if not self.requested:
            # 75 at once: a launcher that was signalled too may kill this rank before it ends (Open MPI's mpiexec
            # sends SIGKILL odls_base_sigkill_timeout after its SIGTERM); the file is resumable whenever that
            # happens, and the code chosen at the end (0, or 1 after a failure) replaces this one
            note_exit(EXIT_RESUMABLE)
        self.requested = True
        self.signal_name = name

    def install(self) -> "StopFlag":
        if not self._previous:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def release(self) -> None:
        """Give the signals back to their previous handlers (the default: a signal ends the process)."""
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}

    def request(self, reason: str) -> None:
        """Ask for a stop from code (the coordinator's STOP message)."""
        self.requested = True
        self.signal_name = self.signal_name or reason

    def check(self) -> None:
        """Raise `StopRequested` if a stop was asked for (called between evaluation batches)."""
        if self.requested:
            raise StopRequested(self.signal_name)

    def reset(self) -> None:
        self.requested, self.signal_name = False, ""


#: The process's stop flag: installed by `cli.main` before anything else happens.
STOP = StopFlag()


class AgreedError(UserError):
    """A failure every rank raised together in an agree-or-fail step: each rank exits on its own, no abort."""

    def __init__(self, message: str, internal: bool = False) -> None:
        super().__init__(message)
        self.internal = internal


def agree(comm, step: Callable[[], T], rank: int = 0) -> T:
    """Run `step` on every rank; if it fails anywhere, raise the first failure on every rank (`AgreedError`).

    `comm`: the run's communicator (`comm.SELF` for one process). A user error keeps its one-line message; an
    internal error carries the failing rank's traceback and ``internal=True`` (exit code 1).
    """
    result, error = None, None
    try:
        result = step()
    except AgreedError as exc:
        error = ("internal" if exc.internal else "user", str(exc))
    except UserError as exc:
        error = ("user", str(exc))
    except Exception as exc:  # noqa: BLE001  (any failure must reach the other ranks)
        error = ("internal", f"rank {rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    failed = [(r, e) for r, e in enumerate(comm.allgather(error)) if e is not None]
    error = None
    if failed:
        r, (kind, msg) = failed[0]
        prefix = f"rank {r}: " if kind == "user" and r != 0 else ""
        error = (kind, prefix + msg)
    if error is not None:
        kind, msg = error
        raise AgreedError(msg, internal=(kind == "internal"))
    return result


def world():
    """mpi4py's COMM_WORLD if this process initialized MPI, else `comm.SELF` (never imports mpi4py itself)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return SELF
    return mpi.COMM_WORLD


def world_rank() -> int:
    return world().Get_rank()


#: Seconds between a failing rank's message and its MPI_Abort.
ABORT_GRACE_SECONDS = 3.0


def say(message: str, stream=None) -> None:
    """Write one whole line in one write: with PYTHONUNBUFFERED (common in job scripts) `print` writes the text
    and its newline separately, and the launcher then interleaves the lines of ranks that speak at once."""
    stream = sys.stderr if stream is None else stream
    stream.write(message + "\n")
    stream.flush()


#: A file where every rank writes the exit code it chose before it exits (0, 2, 75, ...), when a job script
#: sets it: srun --kill-on-bad-exit ends a step's other ranks as soon as one exits non-zero and then returns
#: their signal's code (143), which would hide a user error or a resumable stop (jobs/surface_preemptible.sbatch).
EXIT_FILE = "LANDSCAPE_MPI_EXIT_FILE"


def write_whole(path: str, text: str) -> None:
    """Write `text` to `path` whole or not at all: into a temporary file of this process beside it (unique, so
    ranks writing the same path never share one), then renamed over `path`; a reader never sees it half-written."""
    fd, part = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".part",
                                dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(part, 0o644)  # mkstemp's 0600 would hide the file from the user's group on a shared cluster folder
        os.replace(part, path)
    except BaseException:
        os.remove(part)  # a full disk or a signal: the old file stays whole and nothing is left beside it
        raise


def note_exit(code: int) -> None:
    """Write `code` to $LANDSCAPE_MPI_EXIT_FILE if set (`write_whole`)."""
    path = os.environ.get(EXIT_FILE)
    if not path:
        return
    try:
        write_whole(path, f"{code}\n")
    except OSError as exc:
        say(f"landscape-mpi: warning: cannot write the exit code to {EXIT_FILE}={path}: {exc}")


def launch(argv: list[str]) -> int:
    """Run a launcher line (``mpiexec -n 8 ...``, ``srun ...``) and return the exit code its ranks chose whenever
    the launcher's own is not 0, as jobs/launch.sh does for the job scripts: a launcher that was signalled or
    ended the ranks returns a code of its own (Open MPI's mpiexec 1, srun 143), not the ranks' 75 or 2.

    The ranks write their code to a file of this launch: beside $LANDSCAPE_MPI_EXIT_FILE when a job script set
    it (a folder every node sees), else in the temporary folder."""
    import subprocess

    base = os.environ.get(EXIT_FILE) or os.path.join(tempfile.gettempdir(), "landscape-mpi")
    path = f"{base}.launch.{os.getpid()}"
    if os.path.exists(path):
        os.remove(path)
    try:
        code = subprocess.call(argv, env={**os.environ, EXIT_FILE: path})
        if code != 0:
            try:
                with open(path) as f:
                    chosen = f.read().strip()
            except OSError:
                chosen = ""
            if chosen.isdigit():
                code = int(chosen)
        return code
    finally:
        if os.path.exists(path):
            os.remove(path)


def abort(message: str, code: int = EXIT_FAILURE) -> None:
    """Print ``landscape-mpi: rank R: message`` from this rank and end every rank of the job (MPI_Abort);
    in a single process, just print it (the caller returns `code`)."""
    comm = world()
    say(f"landscape-mpi: rank {comm.Get_rank()}: {message}")
    if comm.Get_size() > 1:  # one rank alone needs no MPI_Abort: the caller returns `code`
        note_exit(code)
        abort_after_grace(comm, code)


def abort_after_grace(comm, code: int) -> None:
    """MPI_Abort the job, ABORT_GRACE_SECONDS after this rank's last message.

    The wait lets the launcher forward the message before MPI_Abort tears the job down: MPICH's hydra drops
    what is still in a rank's stderr pipe (0.5 s lost it on a loaded machine; an abort without any wait lost the
    coordinator's message on an idle one). The job is ending anyway, so a few seconds cost nothing. Every
    MPI_Abort that follows a message goes through here; a worker whose error the coordinator does not act on
    aborts by itself after 10 s of waiting (`scheduler.Worker.run`).
    """
    import time

    time.sleep(ABORT_GRACE_SECONDS)
    comm.Abort(code)


_depth = 0


def run_main(body: Callable[[], int]) -> int:
    """The guard around every command: exit codes (also to $LANDSCAPE_MPI_EXIT_FILE, `note_exit`), one-line
    user errors, abort of multi-rank jobs.

    Once the outermost command has noted its code, the stop signals end the process again: nothing is left to
    write, and a launcher ending the job (Open MPI's mpiexec after a rank exited non-zero sends SIGTERM, then
    SIGKILL, to one rank after another) need not wait for a rank that would only go on finalizing MPI."""
    global _depth
    _depth += 1
    try:
        code = _guarded(body)
        note_exit(code)
    finally:
        _depth -= 1
    if _depth == 0:
        STOP.release()
    return code


def _guarded(body: Callable[[], int]) -> int:
    STOP.install()
    try:
        return body()
    except AgreedError as exc:  # every rank has it: rank 0 speaks for all, every rank exits by itself
        if world_rank() == 0:
            say(f"landscape-mpi: error: {exc}")
        return EXIT_FAILURE if exc.internal else EXIT_USER_ERROR
    except UserError as exc:
        if world().Get_size() > 1:  # found by this rank alone: the others must not wait
            abort(f"error: {exc}", EXIT_USER_ERROR)
        say(f"landscape-mpi: error: {exc}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if world().Get_size() > 1:
            abort("interrupted", 130)
        say("landscape-mpi: interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001
        if world().Get_size() > 1:
            abort(f"internal error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}", EXIT_FAILURE)
        traceback.print_exc()
        say(f"landscape-mpi: internal error: {exc}")
        return EXIT_FAILURE
