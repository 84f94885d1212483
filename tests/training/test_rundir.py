import pytest

from cytotune.training.rundir import RunExistsError, RunWriter


def test_nothing_appears_until_commit_and_abort_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    w = RunWriter(out)
    w.write_json("metrics.json", {"a": 1})
    assert not out.exists()
    w.abort()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_finished_run_is_not_overwritten_unless_asked(tmp_path):
    out = tmp_path / "run"
    w = RunWriter(out)
    w.write_text("config.yaml", "seed: 1\n")
    w.write_json("metrics.json", {"a": 1})
    w.commit()
    with pytest.raises(RunExistsError, match="--overwrite"):
        RunWriter(out)
    w2 = RunWriter(out, overwrite=True)
    w2.write_text("config.yaml", "seed: 2\n")
    w2.write_json("metrics.json", {"a": 2})
    # the old run is intact until the new one is committed
    assert (out / "metrics.json").read_text().count("1") == 1
    w2.commit()
    assert '"a": 2' in (out / "metrics.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_nan_becomes_null(tmp_path):
    w = RunWriter(tmp_path / "r")
    w.write_json("metrics.json", {"auroc": float("nan")})
    assert "null" in w.path("metrics.json").read_text()
    w.abort()


# ---- item 7: --overwrite only replaces a finished run ---------------------------------------
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cytotune.training.config import ConfigError, TrainConfig
from cytotune.training.rundir import RunDirError, clean_stale, is_run_dir, owned_tmp_path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _finished_run(out: Path, value: int = 1) -> Path:
    w = RunWriter(out, overwrite=True)
    w.write_text("config.yaml", "seed: 1\n")
    w.write_json("metrics.json", {"a": value})
    return w.commit()


def test_overwrite_refuses_a_folder_of_user_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(RunExistsError, match="not a cytotune run directory"):
            RunWriter(out, overwrite=overwrite)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_overwrite_refuses_a_folder_of_images(synthetic_data):
    class_folder = next(p for p in synthetic_data.iterdir() if p.is_dir())
    before = sorted(p.name for p in class_folder.iterdir())
    for target in (synthetic_data, class_folder):
        with pytest.raises(RunExistsError, match="never deletes other folders"):
            RunWriter(target, overwrite=True)
    assert sorted(p.name for p in class_folder.iterdir()) == before


def test_overwrite_refuses_a_plain_file(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("a,b\n")
    for overwrite in (False, True):
        with pytest.raises(RunExistsError, match="is a file, not a folder"):
            RunWriter(target, overwrite=overwrite)
    assert target.read_text() == "a,b\n"
    with pytest.raises(RunDirError, match="results.csv is a file"):
        RunWriter(target / "run")


def test_a_run_is_recognised_by_metrics_and_config(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    (out / "config.yaml").write_text("seed: 1\n")
    assert is_run_dir(out)
    (out / "config.yaml").unlink()
    assert not is_run_dir(out)  # metrics.json alone is not enough to delete a folder


def test_overwrite_checks_again_at_commit(tmp_path):
    out = _finished_run(tmp_path / "run")
    w = RunWriter(out, overwrite=True)
    w.write_text("config.yaml", "seed: 1\n")
    w.write_json("metrics.json", {"a": 2})
    # the finished run is replaced by a user's folder while the new run trains
    os.rename(out, tmp_path / "moved")
    out.mkdir()
    (out / "photo.png").write_bytes(b"x")
    with pytest.raises(RunExistsError, match="no longer a cytotune run"):
        w.commit()
    w.abort()
    assert (out / "photo.png").read_bytes() == b"x"


@pytest.mark.parametrize("out_rel", [".", "class_a", "class_a/run", ".."])
def test_out_inside_equal_or_around_the_data_root_is_refused(tmp_path, out_rel):
    data = tmp_path / "data"
    (data / "class_a").mkdir(parents=True)
    config = TrainConfig.from_dict({"data": {"source": str(data)},
                                    "out": str(data / out_rel), "overwrite": True})
    with pytest.raises(ConfigError, match="data"):
        config.validate()


def test_out_next_to_a_csv_manifest_is_fine(tmp_path):
    csv = tmp_path / "manifest.csv"
    csv.write_text("path,label\n")
    TrainConfig.from_dict({"data": {"source": str(csv)}, "out": str(tmp_path / "runs" / "a")}
                          ).validate()
    with pytest.raises(ConfigError, match="holds the data set"):
        TrainConfig.from_dict({"data": {"source": str(csv)}, "out": str(tmp_path)}).validate()


# ---- item 8: race-free publish ----------------------------------------------------------------
def test_second_writer_to_the_same_out_fails_and_keeps_the_first(tmp_path):
    out = tmp_path / "run"
    a, b = RunWriter(out), RunWriter(out)  # both start while --out is free
    for w, value in ((a, 1), (b, 2)):
        w.write_text("config.yaml", "seed: 1\n")
        w.write_json("metrics.json", {"a": value})
    a.commit()
    with pytest.raises(RunExistsError, match="appeared while this run was training"):
        b.commit()
    b.abort()
    assert json.loads((out / "metrics.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_published_into_a_preexisting_empty_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    w = RunWriter(out)
    w.write_text("config.yaml", "seed: 1\n")
    w.write_json("metrics.json", {"a": 1})
    w.commit()
    assert is_run_dir(out)


def test_overwrite_into_an_empty_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _finished_run(out)
    assert is_run_dir(out) and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_staged_run_without_its_files_is_not_published(tmp_path):
    w = RunWriter(tmp_path / "run")
    w.write_json("metrics.json", {"a": 1})
    with pytest.raises(RunDirError, match="lacks config.yaml"):
        w.commit()
    w.abort()
    assert list(tmp_path.iterdir()) == []


_RACER = """
import json, sys, time
from pathlib import Path
from cytotune.training.rundir import RunExistsError, RunWriter
out, go, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
w = RunWriter(out)
w.write_text("config.yaml", "seed: 1")
w.write_json("metrics.json", {"writer": me})
Path(str(go) + "." + me).touch()
while not go.exists():
    time.sleep(0.005)
try:
    w.commit()
    print("written")
except RunExistsError as err:
    w.abort()
    print("refused:", err)
"""


def test_two_processes_publishing_to_one_out_one_wins(tmp_path):
    out, go = tmp_path / "run", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(out), str(go), me], env=env,
                              stdout=subprocess.PIPE, text=True) for me in ("a", "b")]
    deadline = time.time() + 60
    while not all(Path(f"{go}.{me}").exists() for me in "ab") and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert sorted(o.split(":")[0].strip() for o in outputs) == ["refused", "written"]
    winner = "ab"[[o.startswith("written") for o in outputs].index(True)]
    assert json.loads((out / "metrics.json").read_text()) == {"writer": winner}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("go")) == ["run"]


# ---- item 11: leftovers of dead processes -----------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


_STAGER = """
import sys, time
from cytotune.training.rundir import RunWriter
w = RunWriter(sys.argv[1])
w.write_json("metrics.json", {})
print(w.staging, flush=True)
time.sleep(600)
"""


def test_partial_folder_of_a_killed_process_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _STAGER, str(out)],
                            env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE,
                            text=True)
    staging = Path(proc.stdout.readline().strip())
    assert staging.is_dir()
    proc.kill()  # kill -9: no cleanup in the process itself
    proc.wait()
    assert staging.is_dir()
    RunWriter(tmp_path / "another").abort()  # the next run in the same folder
    assert not staging.exists()
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_live_processes_and_other_hosts_are_kept(tmp_path):
    from cytotune.training.rundir import _host_tag

    host, dead = _host_tag(), _dead_pid()
    dead_partial = tmp_path / f".x.partial-{host}-{dead}-0123abcd"
    dead_trash = tmp_path / f".x.old-{host}-{dead}-0123abce"
    live_partial = tmp_path / f".y.partial-{host}-{os.getppid()}-0123abcd"
    other_host = tmp_path / f".z.partial-elsewhere-{dead}-0123abcd"
    for folder in (dead_partial, dead_trash, live_partial, other_host):
        folder.mkdir()
        (folder / "metrics.json").write_text("{}")
    dead_tmp = tmp_path / f"summary.csv.{host}-{dead}-89abcdef.tmp"
    dead_tmp.write_text("x")
    user_file = tmp_path / "notes.partial-1-2.tmp"
    user_file.write_text("mine")
    removed = clean_stale(tmp_path)
    assert sorted(removed) == sorted([dead_partial, dead_trash, dead_tmp])
    assert live_partial.is_dir() and other_host.is_dir() and user_file.is_file()
    tmp = owned_tmp_path(tmp_path / "store.sqlite")
    assert tmp.name.startswith("store.sqlite.") and tmp.name.endswith(".tmp")
    tmp.write_text("in progress")
    assert clean_stale(tmp_path) == [] and tmp.exists()  # ours: this process is alive


# ---- item 12: file-system errors name the path -----------------------------------------------
def test_read_only_out_is_one_error_naming_the_path(read_only_folder):
    with pytest.raises(RunDirError, match=f"{read_only_folder}.*not writable.*choose another"):
        RunWriter(read_only_folder / "run")
    with pytest.raises(RunDirError, match="not writable"):
        RunWriter(read_only_folder / "sub" / "run")


def test_full_disk_while_writing_leaves_no_partial_folder(full_disk):
    out = full_disk / "run"
    w = RunWriter(out)
    with pytest.raises(RunDirError, match=f"{out}.*disk is full"):
        with w.writing():
            w.write_text("predictions.csv", "x" * 200_000)
    w.abort()
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


# ---- issue 31, item 1: --overwrite replaces only what cytotune wrote ---------------------------
def _user_files(run: Path) -> None:
    (run / "notes.txt").write_text("my notes")
    (run / "extra").mkdir()
    (run / "extra" / "a.txt").write_text("mine too")


def _assert_user_files(run: Path) -> None:
    assert (run / "notes.txt").read_text() == "my notes"
    assert (run / "extra" / "a.txt").read_text() == "mine too"


def test_overwrite_refuses_a_run_folder_holding_user_files_and_names_them(tmp_path):
    out = _finished_run(tmp_path / "run")
    _user_files(out)
    with pytest.raises(RunExistsError, match=r"did not write \(extra/, notes\.txt\)"):
        RunWriter(out, overwrite=True)
    _assert_user_files(out)
    assert json.loads((out / "metrics.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_user_files_added_while_the_new_run_trains_are_kept(tmp_path):
    out = _finished_run(tmp_path / "run")
    w = RunWriter(out, overwrite=True)
    w.write_text("config.yaml", "seed: 2\n")
    w.write_json("metrics.json", {"a": 2})
    _user_files(out)  # after the check at the start of the run
    with pytest.raises(RunExistsError, match=r"notes\.txt"):
        w.commit()
    w.abort()
    _assert_user_files(out)
    assert json.loads((out / "metrics.json").read_text()) == {"a": 1}  # the old run, put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_of_a_clean_run_replaces_it_whole(tmp_path):
    out = _finished_run(tmp_path / "run")
    for name in ("predictions.csv", "head.safetensors", "train.log"):
        (out / name).write_text("old")
    w = RunWriter(out, overwrite=True)
    w.write_text("config.yaml", "seed: 2\n")
    w.write_json("metrics.json", {"a": 2})
    w.commit()
    # none of the old run's files survives beside the new one's
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "manifest.json",
                                                     "metrics.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_written_before_manifests_is_still_replaced(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    for name in ("config.yaml", "metrics.json", "predictions.csv", "train.log",
                 "head.safetensors", "adapter.safetensors"):
        (out / name).write_text("{}")
    _finished_run(out, value=3)
    assert json.loads((out / "metrics.json").read_text()) == {"a": 3}
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "manifest.json",
                                                     "metrics.json"]


def test_files_appearing_in_the_replaced_run_at_the_last_moment_are_kept(tmp_path):
    from cytotune.training.rundir import _discard_old_run

    out = tmp_path / "run"
    trash = tmp_path / ".run.old-x"
    trash.mkdir()
    for name in ("config.yaml", "metrics.json", "manifest.json"):
        (trash / name).write_text("{}")
    (trash / "late.txt").write_text("mine")
    _discard_old_run(trash, out)
    (kept,) = tmp_path.iterdir()
    assert kept.name.startswith("run.kept-")  # visible, and not a name clean_stale deletes
    assert [p.name for p in kept.iterdir()] == ["late.txt"]
    assert clean_stale(tmp_path) == []


def test_a_committed_run_lists_every_file_with_its_digest(tmp_path):
    import hashlib

    from cytotune.training.run_manifest import foreign_entries

    w = RunWriter(tmp_path / "run")
    w.write_text("config.yaml", "seed: 1\n")
    w.write_json("metrics.json", {"a": 1})
    w.path("head.safetensors").write_bytes(b"\x00" * 100)
    out = w.commit()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["digest"] == "sha256"
    assert sorted(manifest["files"]) == ["config.yaml", "head.safetensors", "metrics.json"]
    assert manifest["files"]["head.safetensors"] == {
        "sha256": hashlib.sha256(b"\x00" * 100).hexdigest(), "bytes": 100}
    assert foreign_entries(out) == []


def test_cli_overwrite_keeps_a_users_files(synthetic_data, tiny_model_names, tmp_path, capsys):
    """The issue's case, with the real CLI: a finished run copied to ow/run, a notes file and a
    sub-folder added, then ``train --out ow/run --overwrite``."""
    import shutil

    from cytotune.cli import main

    args = ["train", "--data", str(synthetic_data), "--model", tiny_model_names["uni"],
            "--no-pretrained", "--method", "linear", "--shots", "2", "--linear-epochs", "2",
            "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--out", str(tmp_path / "first")]) == 0
    run = tmp_path / "ow" / "run"
    shutil.copytree(tmp_path / "first", run)
    _user_files(run)
    before = (run / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main([*args, "--seed", "2", "--out", str(run), "--overwrite"]) == 2
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out
    assert "extra/" in errors[0] and "notes.txt" in errors[0]
    _assert_user_files(run)
    assert (run / "metrics.json").read_bytes() == before
    # moved out of the way, the run is replaced
    shutil.move(str(run / "notes.txt"), tmp_path / "notes.txt")
    shutil.move(str(run / "extra"), tmp_path / "extra")
    assert main([*args, "--seed", "2", "--out", str(run), "--overwrite"]) == 0
    assert "seed: 2" in (run / "config.yaml").read_text()
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]
