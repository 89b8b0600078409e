"""tests/zygote.py, the pre-imported interpreter conftest's `run` forks `python -m` runs from: a forked run must
be the run a fresh interpreter makes (output, exit code, environment, timeout), and the fork path must really be
taken, or the suite pays the imports again without noticing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ZYGOTE, cli, run


def fresh(cmd, **extra):
    from conftest import ROOT, env

    return subprocess.run(cmd, capture_output=True, text=True, env=env(**extra), cwd=ROOT, timeout=300)


def test_a_forked_run_prints_and_exits_as_a_fresh_interpreter():
    before = ZYGOTE.runs
    for cmd, rc in ((cli("surface", "--help"), 0), (cli("surface", "--x=1:0:3"), 2)):
        forked = run(cmd, check_rc=None)
        ref = fresh(cmd)
        assert (forked.returncode, forked.stdout, forked.stderr) == (ref.returncode, ref.stdout, ref.stderr)
        assert forked.returncode == rc
    assert ZYGOTE.runs == before + 2  # both were forked, not started afresh


def test_the_run_sees_its_own_environment_arguments_and_exception():
    code = "import os, sys; print(os.environ['PROBE'], sys.argv[1:]); raise ValueError('boom')"
    forked = run([sys.executable, "-m", "zygote_probe", "a", "b"], check_rc=1, PROBE="seen", PROBE_CODE=code)
    assert forked.stdout == "seen ['a', 'b']\n"
    assert forked.stderr.rstrip().endswith("ValueError: boom")


def test_a_run_past_its_timeout_is_killed_and_reported():
    before = ZYGOTE.runs
    with pytest.raises(subprocess.TimeoutExpired):
        run([sys.executable, "-m", "zygote_probe"], timeout=1, PROBE_CODE="import time; time.sleep(60)")
    assert ZYGOTE.runs == before + 1


def test_a_different_import_time_environment_gets_a_fresh_interpreter():
    before = ZYGOTE.runs
    p = run([sys.executable, "-m", "zygote_probe"], OMP_NUM_THREADS="2",
            PROBE_CODE="import torch; print(torch.get_num_threads())")
    assert p.stdout == "2\n" and ZYGOTE.runs == before


def test_atexit_handlers_run_and_a_signal_is_reported_as_a_fresh_run_reports_it():
    code = "import atexit, os, signal, sys; atexit.register(print, 'atexit ran'); sys.exit(int(os.environ['CODE']))"
    before = ZYGOTE.runs
    for rc in (0, 3):
        forked = run([sys.executable, "-m", "zygote_probe"], check_rc=None, PROBE_CODE=code, CODE=rc)
        assert (forked.returncode, forked.stdout) == (rc, "atexit ran\n")
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    forked = run([sys.executable, "-m", "zygote_probe"], check_rc=None, PROBE_CODE=killed)
    assert forked.returncode == fresh([sys.executable, "-m", "zygote_probe"], PROBE_CODE=killed).returncode == -15
    assert ZYGOTE.runs == before + 3
