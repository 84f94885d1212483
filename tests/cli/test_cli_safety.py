"""The CLI never loses data and never answers bad input or a file-system failure with a
traceback: one line naming the option or path, exit code 2 (130/143 when interrupted)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cytotune.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _tiny(synthetic_data, tiny_model_names, tmp_path, *extra: str) -> list[str]:
    return ["train", "--data", str(synthetic_data), "--model", tiny_model_names["uni"],
            "--pretrained", "false", "--method", "linear", "--shots", "2", "--linear-epochs", "2",
            "--cache-dir", str(tmp_path / "cache"), *extra]


def _one_error_line(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, captured.out
    assert "Traceback" not in captured.out + captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_out_is_a_file_or_under_a_file(synthetic_data, tiny_model_names, tmp_path, capsys):
    target = tmp_path / "results.csv"
    target.write_text("keep")
    for out, overwrite in ((target, "false"), (target, "true"), (target / "run", "false")):
        code = main(_tiny(synthetic_data, tiny_model_names, tmp_path, "--out", str(out),
                          "--overwrite", overwrite))
        assert code == 2
        _one_error_line(capsys, str(target), "is a file")
    assert target.read_text() == "keep"


def test_overwrite_never_deletes_user_files_or_the_data(synthetic_data, tiny_model_names,
                                                        tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(_tiny(synthetic_data, tiny_model_names, tmp_path, "--out", str(mine),
                      "--overwrite", "true")) == 2
    _one_error_line(capsys, str(mine), "not a cytotune run directory")
    assert (mine / "notes.txt").read_text() == "keep"
    before = sorted(str(p) for p in synthetic_data.rglob("*"))
    for out in (synthetic_data, synthetic_data / "new_run", synthetic_data.parent):
        assert main(_tiny(synthetic_data, tiny_model_names, tmp_path, "--out", str(out),
                          "--overwrite", "true")) == 2
        _one_error_line(capsys, "data")
    assert sorted(str(p) for p in synthetic_data.rglob("*")) == before


def test_read_only_out_is_one_line(synthetic_data, tiny_model_names, tmp_path, capsys,
                                   read_only_folder):
    assert main(_tiny(synthetic_data, tiny_model_names, tmp_path,
                      "--out", str(read_only_folder / "run"))) == 2
    _one_error_line(capsys, str(read_only_folder), "not writable")


def test_read_only_mount_point_as_out_is_refused_before_any_work(
        synthetic_data, tiny_model_names, tmp_path, capsys, read_only_folder):
    """Issue 31: the mount point itself as --out trained fully, then failed to publish and
    suggested freeing space."""
    assert main(_tiny(synthetic_data, tiny_model_names, tmp_path,
                      "--out", str(read_only_folder))) == 2
    _one_error_line(capsys, f"--out {read_only_folder}", "not writable")
    assert not (tmp_path / "cache").exists()  # refused before decoding or training


def test_full_disk_at_out_is_one_line_and_leaves_nothing(synthetic_data, tiny_model_names,
                                                         tmp_path, capsys, full_disk):
    out = full_disk / "run"
    assert main(_tiny(synthetic_data, tiny_model_names, tmp_path, "--out", str(out))) == 2
    _one_error_line(capsys, str(out), "disk is full")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_debug_shows_the_traceback(synthetic_data, tiny_model_names, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    from cytotune.training.rundir import RunExistsError

    with pytest.raises(RunExistsError):
        main(["--debug", *_tiny(synthetic_data, tiny_model_names, tmp_path, "--out", str(target))])


@pytest.mark.parametrize("flags,option", [(["--batch-size", "0"], "optim.batch_size"),
                                          (["--steps", "-5"], "optim.steps"),
                                          (["--lr", "nan"], "optim.lr"),
                                          (["--lr", "inf"], "optim.lr"),
                                          (["--lr", "1e300"], "optim.lr"),  # overflowed
                                          (["--lr", "5"], "optim.lr"),
                                          (["--linear-epochs", "0"], "optim.linear_epochs"),
                                          (["--weight-decay", "-1"], "optim.weight_decay"),
                                          (["--val-every", "0"], "optim.val_every")])
def test_bad_numbers_are_one_line_before_any_work(synthetic_data, tiny_model_names, tmp_path,
                                                  capsys, flags, option):
    out = tmp_path / "run"
    assert main(_tiny(synthetic_data, tiny_model_names, tmp_path, "--out", str(out),
                      *flags)) == 2
    _one_error_line(capsys, option)
    assert not out.exists() and not (tmp_path / "cache").exists()  # refused before any work


def test_num_workers_below_zero_in_a_config_file(synthetic_data, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{source: {synthetic_data}}}\nnum_workers: -1\n")
    assert main(["train", "--config", str(cfg)]) == 2
    _one_error_line(capsys, "num_workers", "-1")


def test_malformed_and_python_tag_yaml_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {source: /x\nseed: 1\n")
    assert main(["train", "--config", str(bad)]) == 2
    _one_error_line(capsys, f"{bad}:", "not valid YAML")
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("data: {source: /x}\nseed: !!python/object/apply:os.getpid []\n")
    assert main(["train", "--config", str(tagged)]) == 2
    _one_error_line(capsys, f"{tagged}:2:", "python/object")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\ndatasets:\n  d: {source: /x}\nbackbones: [uni\nseeds: [1]\n")
    assert main(["sweep", str(sweep), "--dry-run"]) == 2
    _one_error_line(capsys, f"{sweep}:", "not valid YAML")
    sweep.write_text("name: !!python/name:os.system\ndatasets: {d: /x}\nbackbones: [uni]\n")
    assert main(["sweep", str(sweep), "--dry-run"]) == 2
    _one_error_line(capsys, f"{sweep}:1:", "python/name")


def test_interrupted_single_run_says_what_is_true(synthetic_data, tmp_path, capsys, monkeypatch):
    import cytotune.training.runner as runner

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_training", interrupted)
    assert main(["train", "--data", str(synthetic_data), "--out", str(tmp_path / "r")]) == 130
    out = capsys.readouterr().out
    assert "not written" in out and "from the start" in out and "resume" not in out


def _signal_a_training_run(synthetic_data, tiny_model_names, tmp_path, sig: int
                           ) -> tuple[Path, int, str]:
    """Start a long LoRA run in a subprocess, wait until it has read its data set (it then
    decodes and trains: a million steps), send ``sig``; return the runs folder, exit status and
    output."""
    runs = tmp_path / "runs"
    runs.mkdir()
    cmd = [sys.executable, "-m", "cytotune.cli", "train", "--data", str(synthetic_data),
           "--model", tiny_model_names["uni"], "--pretrained", "false", "--method", "lora",
           "--rank", "2", "--shots", "2", "--steps", "1000000", "--val-every", "1000000",
           "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--out", str(runs / "run")]
    # a child started from a test may inherit SIGINT ignored; Ctrl-C's default must apply
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        staged = []
        while time.time() < deadline and proc.poll() is None:
            staged = [p for p in runs.iterdir() if ".partial-" in p.name]
            log = staged[0] / "train.log" if staged else None
            if log is not None and log.exists() and "data " in log.read_text():
                break
            time.sleep(0.2)
        assert staged and proc.poll() is None, "the run did not start"
        time.sleep(2.0)  # decoding or inside the training loop
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return runs, proc.returncode, output


def test_sigterm_stops_a_training_run_and_leaves_no_partial_folder(synthetic_data,
                                                                   tiny_model_names, tmp_path):
    runs, code, output = _signal_a_training_run(synthetic_data, tiny_model_names, tmp_path,
                                                signal.SIGTERM)
    assert code == 143, output
    assert "terminated" in output and "Traceback" not in output
    assert list(runs.iterdir()) == []  # neither a partial folder nor a run


def test_ctrl_c_on_a_single_run_removes_it_and_says_it_starts_over(synthetic_data,
                                                                   tiny_model_names, tmp_path):
    """A real SIGINT (what Ctrl-C sends) mid-training: exit 130, no partial folder left, and a
    message for a single run (it restarts from scratch; only the cache is kept), not the
    sweep's "resume"."""
    runs, code, output = _signal_a_training_run(synthetic_data, tiny_model_names, tmp_path,
                                                signal.SIGINT)
    assert code == 130, output
    assert "interrupted: the run was not written" in output and "Traceback" not in output
    assert "starts over" in output and "from the start" in output
    assert "cached are reused" in output and "run the same command again to resume" not in output
    assert list(runs.iterdir()) == []
