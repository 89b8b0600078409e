"""The CLI as a user meets it: every error case (one line naming the fix, its exit code, no data lost),
resume after an interruption, info, and the embedded demo."""

import json
import os
import signal
import subprocess

import h5py
import numpy as np
import pytest

from conftest import ROOT, assert_same_results, cli, env, one_line_error, read_results, run, wait_for_files

EXIT_RESUMABLE = 75
DIGITS = ["--model", "digits_cnn", "--dataset", "digits"]


@pytest.mark.parametrize("spec,needle", [("1:-1:5", "min must be smaller"), ("a:b:c", "expected numbers"),
                                         ("-1:1", "expected min:max:num"), ("-1:1:0", "at least 1")])
def test_bad_grid_spec(tmp_path, digits_ckpt, spec, needle):
    p = run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, f"--x={spec}", "--out", str(tmp_path / "s.h5")),
            check_rc=None)
    one_line_error(p, needle, "--x")
    assert not (tmp_path / "s.h5").exists()


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path, digits_ckpt):
    out = str(tmp_path / "s.h5")
    p = run(cli("surface", *DIGITS, "--checkpoint", str(tmp_path / "nope.pt"), "--out", out), check_rc=None)
    one_line_error(p, "no such file", "nope.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(os.urandom(2000))
    p = run(cli("surface", *DIGITS, "--checkpoint", str(bad), "--out", out), check_rc=None)
    one_line_error(p, "not a readable PyTorch checkpoint", "corrupt.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(digits_ckpt, "rb").read()[:3000])
    p = run(cli("surface", *DIGITS, "--checkpoint", str(truncated), "--out", out), check_rc=None)
    one_line_error(p, "not a readable PyTorch checkpoint")
    p = run(cli("surface", "--model", "digits_mlp", "--checkpoint", digits_ckpt, "--out", out), check_rc=None)
    one_line_error(p, "does not fit the model", "missing: fc1.weight", "unexpected: conv1.weight")
    assert not os.path.exists(out)


def test_unknown_model_dataset_and_import_paths(tmp_path, digits_ckpt):
    out = str(tmp_path / "s.h5")
    p = run(cli("surface", "--model", "resnet21", "--checkpoint", digits_ckpt, "--out", out), check_rc=None)
    one_line_error(p, "unknown model", "resnet20")
    p = run(cli("surface", "--model", "no_such_pkg.mod:f", "--checkpoint", digits_ckpt, "--out", out), check_rc=None)
    one_line_error(p, "cannot import no_such_pkg.mod")
    p = run(cli("surface", *DIGITS[:2], "--dataset", "mnist", "--checkpoint", digits_ckpt, "--out", out), check_rc=None)
    one_line_error(p, "unknown dataset")
    p = run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--norm", "global", "--out", out), check_rc=None)
    one_line_error(p, "--norm")


def test_missing_cifar_folder_names_layout(tmp_path):
    # A resnet20 checkpoint (untrained: only its shapes matter), so that the run gets past the checkpoint and
    # fails where this test says, at the data path.
    import torch

    from landscape_mpi.models import build_model

    ckpt = tmp_path / "resnet20.pt"
    torch.save(build_model("resnet20").state_dict(), ckpt)
    p = run(cli("surface", "--model", "resnet20", "--dataset", "cifar10", "--data-root", str(tmp_path / "nodata"),
                "--checkpoint", str(ckpt), "--out", str(tmp_path / "s.h5")), check_rc=None)
    one_line_error(p, "CIFAR-10 not found", "cifar-10-batches-py/", "data_batch_1")
    assert not (tmp_path / "s.h5").exists()
    p = run(cli("train", "--model", "resnet20", "--dataset", "cifar10", "--data-root", str(tmp_path / "nodata"),
                "--out-dir", str(tmp_path / "ck")), check_rc=None)
    one_line_error(p, "CIFAR-10 not found", "cifar-10-batches-py/", "data_batch_1")


def test_unwritable_output(tmp_path, digits_ckpt):
    p = run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3", "--out",
                str(tmp_path / "missing_dir" / "s.h5")), check_rc=None)
    one_line_error(p, "does not exist", "--out")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    p = run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3", "--out", str(blocker / "s.h5")),
            check_rc=None)
    one_line_error(p, "--out")


def test_not_a_surface_file_is_never_overwritten(tmp_path, digits_ckpt):
    out = tmp_path / "notes.h5"
    out.write_text("my precious notes")
    p = run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3", "--out", str(out)), check_rc=None)
    one_line_error(p, "not a readable HDF5 surface file")
    assert out.read_text() == "my precious notes"


def test_mismatched_resume_refused_with_diff_then_overwrite(tmp_path, digits_ckpt):
    out = tmp_path / "s.h5"
    run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:5", "--y=-1:1:3", "--out", str(out)))
    before = out.read_bytes()
    p = run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:7", "--y=-1:1:3", "--seed", "4",
                "--out", str(out)), check_rc=None)
    one_line_error(p, "another configuration", "x: file has -1.0:1.0:5, command asks -1.0:1.0:7",
                          "seed: file has 0, command asks 4", "--overwrite")
    assert out.read_bytes() == before  # nothing computed is lost
    run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:7", "--y=-1:1:3", "--out", str(out),
            "--overwrite"))
    with h5py.File(out, "r") as f:
        assert f["results/done"].shape == (7, 3) and f["results/done"][()].all()


def test_changed_checkpoint_refused(tmp_path, digits_ckpt):
    out = tmp_path / "s.h5"
    run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3", "--out", str(out)))
    other = os.path.join(os.path.dirname(digits_ckpt), "epoch_001.pt")
    p = run(cli("surface", *DIGITS, "--checkpoint", other, "--x=-1:1:3", "--out", str(out)), check_rc=None)
    one_line_error(p, "checkpoint: file was computed from another file")


def test_complete_file_exits_at_once(tmp_path, digits_ckpt):
    out = tmp_path / "s.h5"
    run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3", "--out", str(out)))
    before = out.read_bytes()
    p = run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3", "--out", str(out)))
    assert "complete: nothing to compute" in p.stderr
    assert out.read_bytes() == before


def test_resume_after_failure_equals_uninterrupted(tmp_path, digits_ckpt):
    args = [*DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:6", "--y=-1:0.5:4", "--samples", "200", "--threads", "1"]
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    run(cli("surface", *args, "--out", str(full)))
    p = run(cli("surface", *args, "--out", str(part)), check_rc=1, LANDSCAPE_MPI_TEST_FAIL="0:9")
    assert "test hook" in p.stderr
    assert read_results(part)["done"].sum() == 9  # the 9 finished points were written before the error
    run(cli("surface", *args, "--out", str(part)))
    assert_same_results(full, part)


def test_sigterm_stops_gracefully_and_resumes(tmp_path, digits_ckpt):
    args = [*DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:8", "--y=-1:1:5", "--samples", "100", "--threads", "1"]
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    run(cli("surface", *args, "--out", str(full)))
    gate = tmp_path / "gate"
    proc = subprocess.Popen(cli("surface", *args, "--out", str(part), "--flush-seconds", "0.1"), cwd=ROOT,
                            env=env(LANDSCAPE_MPI_TEST_DELAY="0", LANDSCAPE_MPI_TEST_GATE=f"mid_run:{gate}",
                                    LANDSCAPE_MPI_EXIT_FILE=tmp_path / "exit"),
                            stderr=subprocess.PIPE, text=True)
    wait_for_files([f"{gate}.reached.0"], timeout=300)  # held after its first point: the grid cannot finish
    proc.send_signal(signal.SIGTERM)
    gate.write_text("go")
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == EXIT_RESUMABLE, err
    assert (tmp_path / "exit").read_text() == f"{EXIT_RESUMABLE}\n"  # what a job script reads (note_exit)
    assert "Rerun the same command to resume" in err
    r = read_results(part)
    n_done = r["done"].sum()
    assert 1 <= n_done < 40 and "caught SIGTERM" in err
    computed = sum(int(line.split()[4]) for line in err.splitlines() if line.strip().startswith("rank "))
    assert computed == n_done  # every point computed before the stop is in the file
    full_r = read_results(full)
    mask = r["done"].astype(bool)
    assert np.array_equal(r["train_loss"][mask], full_r["train_loss"][mask])
    run(cli("surface", *args, "--out", str(part)))
    assert_same_results(full, part)


def test_info_json_and_text(tmp_path, digits_ckpt):
    out = tmp_path / "s.h5"
    run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3", "--y=0:1:2", "--out", str(out)))
    info = json.loads(run(cli("info", str(out), "--json")).stdout)
    assert info["done"] == info["total"] == 6 and info["complete"] is True
    assert info["config"]["x"] == "-1.0:1.0:3" and info["config"]["norm"] == "filter" and info["config"]["seed"] == 0
    assert info["metrics"]["train_loss"]["min"] <= info["metrics"]["train_loss"]["max"]
    text = run(cli("info", str(out))).stdout
    assert "6/6 points done" in text
    p = run(cli("info", str(tmp_path / "none.h5")), check_rc=None)
    one_line_error(p, "no such file")


def test_demo_completes(tmp_path, demo_run):
    out_dir, p = demo_run
    path = os.path.join(out_dir, "surface.h5")
    info = json.loads(run(cli("info", str(path), "--json")).stdout)
    assert info["complete"] and info["total"] == 21 * 21
    assert "landscape-plot" in p.stderr
    # the trained model is a real minimum: the center is the lowest train loss of the grid
    with h5py.File(path, "r") as f:
        loss = f["results/train_loss"][()]
    assert np.unravel_index(np.argmin(loss), loss.shape) == (10, 10)
    # and the plotting module draws it, as the demo's closing message says
    made = run(["landscape-plot", str(path), "--out", str(tmp_path / "figs")]).stdout.split()
    assert len(made) == 6 and all(os.path.getsize(m) > 5000 for m in made)


def test_cuda_requested_without_gpu(tmp_path, digits_ckpt):
    p = run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:3", "--device", "cuda",
                "--out", str(tmp_path / "s.h5")), check_rc=None, CUDA_VISIBLE_DEVICES="")  # no GPU, also on GPU hosts
    one_line_error(p, "--device cuda", "use --device cpu")


def test_progress_plain_lines_in_a_batch_log(tmp_path, digits_ckpt):
    p = run(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:6", "--y=-1:1:5", "--samples", "50",
                "--progress-seconds", "0.3", "--out", str(tmp_path / "s.h5")), LANDSCAPE_MPI_TEST_DELAY="0.1")
    lines = [line for line in p.stderr.splitlines() if "] surface: " in line]
    assert len(lines) >= 3, p.stderr
    assert lines[-1].split("] surface: ")[1].startswith("30/30 points (100.0%)")
    assert all(" points/s, ETA " in line for line in lines)
    assert "per-rank summary:" in p.stderr


def test_progress_bar_on_a_terminal(tmp_path, digits_ckpt):
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(cli("surface", *DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:5", "--samples", "50",
                                "--out", str(tmp_path / "s.h5")), cwd=ROOT, env=env(), stderr=slave,
                            stdout=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=120)
    text = out.decode(errors="replace")
    assert proc.returncode == 0
    assert "surface: 100%|" in text and "5/5" in text and "pt/s" in text, text


def test_second_job_on_the_same_file_is_refused(tmp_path, digits_ckpt):
    args = [*DIGITS, "--checkpoint", digits_ckpt, "--x=-1:1:6", "--y=-1:1:5", "--samples", "50"]
    out = tmp_path / "s.h5"
    gate = tmp_path / "gate"
    first = subprocess.Popen(cli("surface", *args, "--out", str(out)), cwd=ROOT, stderr=subprocess.PIPE, text=True,
                             env=env(LANDSCAPE_MPI_TEST_GATE=f"mid_run:{gate}"))
    try:
        wait_for_files([f"{gate}.reached.0"], timeout=300)  # the first job holds the file, mid-run
        p = run(cli("surface", *args, "--out", str(out)), check_rc=None)
        one_line_error(p, "is being written by another running job", f"pid {first.pid}")
    finally:
        gate.write_text("go")
        first.wait(timeout=300)
    assert first.returncode == 0 and read_results(out)["done"].all()  # the first job was not disturbed
    assert not os.path.exists(str(out) + ".lock")
