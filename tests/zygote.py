"""A Python with torch, numpy and h5py already imported that forks one child per `python -m MODULE ARGS` run of the
tests (tests/conftest.py's `run`), so each single-process CLI run skips the ~2.5 s of CPU the imports cost.

Protocol: one JSON request per line on stdin ({"module", "args", "env", "cwd", "stdout", "stderr"}); the answer is a
line {"pid": PID} as soon as the child exists (so that a timeout can kill it), then {"code": EXIT, "cpu": SECONDS}
when it ended (EXIT negative: the signal that killed it, as subprocess reports it; SECONDS: the CPU it used).
The child is the run: its own process, its environment, working directory, stdin /dev/null, stdout and stderr into
the files named, `sys.argv` and `sys.path[0]` as `python -m` sets them; an uncaught exception prints its traceback
and exits 1, and the atexit handlers run, as in a fresh interpreter. Variables read when a library is imported
(thread counts, PYTHONPATH, ATen's CPU capability) must equal the zygote's: conftest sends a run whose environment
differs in them to a fresh interpreter instead.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys

import h5py  # noqa: F401  the imports every run pays for, paid once here
import matplotlib  # noqa: F401
import numpy  # noqa: F401
import torch  # noqa: F401


def _child(req: dict) -> None:
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                            (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        f = os.open(path, flags, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.path[0] = req["cwd"]
    sys.argv = [req["module"], *req["args"]]
    try:
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:  # what the interpreter does with it
        code = _exit_code(e.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    # A fresh interpreter would now run the atexit handlers (mpi4py's MPI_Finalize, h5py's closing of open files,
    # logging's flush) and flush the streams, then tear its modules down; the teardown of torch's modules costs
    # seconds and shows nothing, so the child ends without it.
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def serve() -> None:
    replies = os.fdopen(os.dup(1), "w")
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            replies.close()
            _child(req)  # never returns
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status, usage = os.wait4(pid, 0)
        replies.write(json.dumps({"code": os.waitstatus_to_exitcode(status),
                                  "cpu": usage.ru_utime + usage.ru_stime}) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
