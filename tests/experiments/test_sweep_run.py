"""Sweeps end to end on CPU: killed and resumed, failures recorded, parallel workers, the CLI."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cytotune.experiments import ResultStore, load_sweep, make_report, run_sweep
from cytotune.experiments.cli import main as cli_main
from cytotune.experiments.cli import register
from experiments_helpers import FAST_BASE, small_sweep

HERE = Path(__file__).resolve().parent

# The sweep in a separate process: registers the tiny cards (they live in the test process
# only), slows each run a little so the test can kill it half-way, then runs the sweep.
CHILD = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    from cytotune.models import register_card, tiny_card
    for name in ("clip-vit-b16", "uni"):
        register_card(tiny_card(name), replace=True)
    import cytotune.training.runner as runner
    original = runner.run_training
    def slow(config):
        time.sleep(0.25)
        return original(config)
    runner.run_training = slow
    from cytotune.experiments import run_sweep
    run_sweep(sys.argv[1], sys.argv[2], progress=False)
""")


def _expected_table(records, datasets, backbones, shots):
    """Table 1 cells recomputed from the store's records with plain Python: per seed the lr with
    the best validation accuracy (ties: lower validation loss, then smaller lr), its test
    accuracy, then mean and population std over seeds, in percent."""
    cells = {}
    for dataset in datasets:
        for backbone in backbones:
            rows = records[(records["dataset"] == dataset) & (records["backbone"] == backbone)
                           & (records["shots"] == shots)]
            chosen = []
            for seed, group in rows.groupby("seed"):
                best = min(group.itertuples(), key=lambda r: (
                    -r.val_accuracy, r.val_loss if not np.isnan(r.val_loss) else np.inf, r.lr))
                chosen.append(best.test_accuracy * 100)
            cells[(dataset, backbone)] = (float(np.mean(chosen)), float(np.std(chosen)))
    return cells


def test_sweep_killed_midway_resumes_without_duplicates_and_reports_the_store(
        synthetic_data, second_data, tiny_model_names, tmp_path):
    backbones = [tiny_model_names["clip-vit-b16"], tiny_model_names["uni"]]
    values = small_sweep("e2e", {"gen4": synthetic_data, "gen3": second_data}, backbones,
                         tmp_path / "cache")
    values["base"]["out"] = str(tmp_path / "runs" / "{dataset}" / "{run_id}")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(values, sort_keys=False))
    planned = [r.run_id for r in load_sweep(sweep_file).runs()]
    assert len(planned) == 2 * 2 * 2 * 2 * 2 and len(set(planned)) == 32
    store_path = tmp_path / "results.sqlite"

    child = subprocess.Popen([sys.executable, "-c", CHILD, str(sweep_file), str(store_path)],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        while not store_path.exists() or len(ResultStore(store_path)) < 6:
            assert child.poll() is None, child.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)  # no clean-up of any kind
    finally:
        child.kill()
        child.wait()
    store = ResultStore(store_path)
    before = store.records()
    done_before = set(before["run_id"])
    assert 6 <= len(done_before) < 32

    summary = run_sweep(sweep_file, store_path, progress=False)
    assert summary.already_done == len(done_before)
    # a run published but not yet recorded when killed is read back from its directory
    assert set(summary.completed) | set(summary.recovered) == set(planned) - done_before
    assert not set(summary.completed) & set(summary.recovered)
    assert summary.failed == [] and summary.not_run == []

    records = store.records()
    assert len(records) == 32 and records["run_id"].is_unique
    assert set(records["run_id"]) == set(planned)
    # rows written before the kill are untouched (the runs were not redone)
    kept = records.set_index("run_id").loc[before["run_id"], "finished_at"]
    assert list(kept) == list(before["finished_at"])
    # every run has its directory, including the one killed in flight and redone
    assert all(Path(p, "metrics.json").is_file() for p in records["out_dir"])
    # nothing left to do
    again = run_sweep(sweep_file, store_path, progress=False)
    assert again.completed == [] and again.already_done == 32

    report = make_report(store_path, tmp_path / "report")
    # one method, two shot counts: one learning-curve table, (data set, backbone) x shots
    table = report.tables["e2e__lora__accuracy"]
    assert list(table.index) == [(d, b) for d in ("gen4", "gen3") for b in backbones] + \
        [("Average", b) for b in backbones]
    assert list(table.columns) == ["trainable parameters", "1 shot", "2 shots"]
    for shots in (1, 2):
        column = "1 shot" if shots == 1 else "2 shots"
        expected = _expected_table(records, ["gen4", "gen3"], backbones, shots)
        for (dataset, backbone), (mean, std) in expected.items():
            row = report.summary[(report.summary["dataset"] == dataset)
                                 & (report.summary["backbone"] == backbone)
                                 & (report.summary["shots"] == shots)
                                 & (report.summary["metric"] == "accuracy")].iloc[0]
            assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std)
            # cells are mean [interval]; every run kept its predictions, so the interval is
            # over seeds and test images
            assert row["ci_basis"] == "seeds x test images"
            assert row["ci_low"] <= mean <= row["ci_high"]
            assert table.loc[(dataset, backbone), column] == \
                f"{mean:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
        for backbone in backbones:
            average = np.mean([expected[(d, backbone)][0] for d in ("gen4", "gen3")])
            assert table.loc[("Average", backbone), column] == f"{average:.2f}"
    assert report.html.is_file() and any(p.name.startswith("shots__e2e") for p in report.figures)


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(synthetic_data, tiny_model_names,
                                                         tmp_path):
    # 12 images per class: 50 shots cannot be drawn, the run raises a DataError
    values = small_sweep("fails", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", method="linear", shots=[1, 50, 2], seeds=[1],
                         lrs=[1e-2])
    store = ResultStore(tmp_path / "r.sqlite")
    summary = run_sweep(values, store, progress=False)
    assert len(summary.completed) == 2 and len(summary.failed) == 1
    failed_id, error = summary.failed[0]
    assert "DataError" in error
    failures = store.failures()
    assert list(failures["run_id"]) == [failed_id] and failures.iloc[0]["shots"] == 50
    assert "Traceback" in failures.iloc[0]["traceback"]
    assert store.failed_ids() == {failed_id} and failed_id not in store.done_ids()

    skipped = run_sweep(values, store, progress=False, retry_failed=False)
    assert skipped.skipped_failed == 1 and skipped.completed == [] and skipped.failed == []
    retried = run_sweep(values, store, progress=False)
    assert [f[0] for f in retried.failed] == [failed_id]
    assert len(store.failures()) == 2 and len(store) == 2


def test_interrupt_keeps_finished_runs_and_resume_completes(synthetic_data, tiny_model_names,
                                                           tmp_path, monkeypatch):
    import cytotune.training.runner as runner

    values = small_sweep("ctrl-c", {"gen": synthetic_data}, [tiny_model_names["clip-vit-b16"]],
                         tmp_path / "cache", shots=[1], seeds=[1, 2, 3])
    original, calls = runner.run_training, []

    def interrupted(config):
        calls.append(config.seed)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(config)

    monkeypatch.setattr(runner, "run_training", interrupted)
    store = ResultStore(tmp_path / "r.sqlite")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(values, store, progress=False)
    assert len(store) == 3 and store.failed_ids() == set()
    monkeypatch.setattr(runner, "run_training", original)
    summary = run_sweep(values, store, progress=False)
    assert summary.already_done == 3 and len(summary.completed) == 3 and len(store) == 6


def test_parallel_workers_with_setup_hook_survive_a_dying_worker(synthetic_data, tiny_model_names,
                                                                 tmp_path, monkeypatch):
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("CYTOTUNE_TEST_HOOK_DIR", str(marks))
    monkeypatch.setenv("CYTOTUNE_TEST_TINY_CARDS", "uni")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    values = small_sweep("parallel", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", shots=[1, 2], seeds=[1, 2, 3], lrs=[1e-3])
    store = ResultStore(tmp_path / "r.sqlite")
    summary = run_sweep(values, store, devices=["cpu", "cpu"], progress=False,
                        worker_setup="experiments_worker_hooks:register_tiny_cards_and_die_once")
    # the first seed-3 run killed its worker: recorded as failed; the others all finished
    assert len(summary.failed) == 1 and "WorkerDied" in summary.failed[0][1]
    assert len(summary.completed) == 5 and summary.not_run == []
    records = store.records()
    assert len(records) == 5 and records["run_id"].is_unique
    # (which worker finishes how many runs is up to timing: one may drain the queue while the
    # other is replaced after dying, so only the hook marks below prove there were two workers)
    assert set(records["device"]) == {"cpu"}
    assert len(list(marks.glob("worker-*"))) >= 2  # the hook ran in each of the two workers
    # resumed here, in-process: the same run ids whatever the executor and device
    resumed = run_sweep(values, store, progress=False)
    assert resumed.completed == [summary.failed[0][0]] and len(store) == 6
    assert store.failures()["resolved"].all()


def test_dry_run_runs_nothing(synthetic_data, tiny_model_names, tmp_path):
    values = small_sweep("dry", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache")
    store = ResultStore(tmp_path / "r.sqlite")
    summary = run_sweep(values, store, dry_run=True, progress=False)
    assert summary.dry_run and summary.planned == 8 and summary.to_run == 8
    assert len(summary.runs) == 8 and len(store) == 0


def test_generated_dataset_is_drawn_once_by_the_driver(tiny_model_names, tmp_path):
    values = {"name": "gen", "backbones": [tiny_model_names["uni"]], "method": "linear",
              "shots": [1], "seeds": [1], "lrs": [1e-2],
              "datasets": {"made": {"source": str(tmp_path / "made"),
                                    "generate": {"n_per_class": 4, "image_size": 32, "seed": 3,
                                                 "classes": ["x", "y"]}}},
              "base": {**FAST_BASE, "cache_dir": None}}
    summary = run_sweep(values, tmp_path / "r.sqlite", progress=False)
    assert len(summary.completed) == 1
    assert sorted(p.name for p in (tmp_path / "made").iterdir() if p.is_dir()) == ["x", "y"]


def test_cli_commands(synthetic_data, tiny_model_names, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="cytotune")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = register(sub)
    assert set(commands) == {"sweep", "report"}

    values = small_sweep("cli", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", method="linear", shots=[1], seeds=[1, 2])
    sweep_file = tmp_path / "cli.yaml"
    sweep_file.write_text(yaml.safe_dump(values, sort_keys=False))
    store = tmp_path / "cli.sqlite"
    args = parser.parse_args(["sweep", str(sweep_file), "--store", str(store), "--dry-run"])
    assert commands["sweep"](args) == 0
    assert "to run" in capsys.readouterr().out and len(ResultStore(store)) == 0
    args = parser.parse_args(["sweep", str(sweep_file), "--store", str(store), "--quiet",
                              "--set", "seeds=[1]", "--set", "lrs=[0.01]"])
    assert commands["sweep"](args) == 0
    assert len(ResultStore(store)) == 1
    args = parser.parse_args(["sweep", "--list"])
    assert commands["sweep"](args) == 0
    assert "experiment1_linear" in capsys.readouterr().out

    out = tmp_path / "report"
    args = parser.parse_args(["report", str(store), "--out", str(out), "--metrics",
                              "accuracy,macro_f1", "--sota", "gen=50"])
    assert commands["report"](args) == 0
    assert (out / "report.html").is_file() and (out / "tables.md").is_file()
    assert "cli__linear__1shot__macro_f1" in capsys.readouterr().out

    # stand-alone entry: bad input is a message and exit code 2
    assert cli_main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert cli_main(["report", str(tmp_path / "missing.sqlite"), "--out", str(out)]) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["report", str(store), "--out", str(out), "--sota", "hicervix"])


def test_packed_sweep_stores_what_the_unpacked_sweep_stores(synthetic_data, tiny_model_names,
                                                           tmp_path):
    # random-init backbones: runs of one seed share a backbone (lrs x shots), so packs of 4
    values = small_sweep("packed", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache")
    plain = run_sweep(values, ResultStore(tmp_path / "plain.sqlite"), progress=False)
    packed = run_sweep({**values, "pack_size": 4}, ResultStore(tmp_path / "packed.sqlite"),
                       progress=False)
    assert len(plain.completed) == len(packed.completed) == 8 and not packed.failed
    a = ResultStore(tmp_path / "plain.sqlite").records().set_index("run_id").sort_index()
    b = ResultStore(tmp_path / "packed.sqlite").records().set_index("run_id").sort_index()
    assert list(a.index) == list(b.index)  # packing does not change what a run is
    np.testing.assert_allclose(a["test_accuracy"], b["test_accuracy"])
    np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=1e-4, atol=1e-6)


# ---- nothing computed is lost; parallel sweeps split the work ---------------------------------------
def _count_trainings(monkeypatch) -> list[str]:
    """Patch the training entry points to record each run they train (by its out or seed)."""
    import cytotune.training.group as group
    import cytotune.training.runner as runner

    trained: list[str] = []
    original_alone, original_group = runner.run_training, group.run_training_group

    def alone(config):
        trained.append(str(config.out or config.seed))
        return original_alone(config)

    def together(configs, pack_size=8):
        trained.extend(str(c.out or c.seed) for c in configs)
        return original_group(configs, pack_size=pack_size)

    monkeypatch.setattr(runner, "run_training", alone)
    monkeypatch.setattr(group, "run_training_group", together)
    return trained


def test_a_failing_store_write_loses_no_finished_run(synthetic_data, tiny_model_names, tmp_path,
                                                     monkeypatch):
    """The store refuses writes (a full disk): the sweep stops with one error naming the store,
    and the next sweep records the runs finished meanwhile without training them again."""
    import sqlite3

    from cytotune.experiments import store as store_module

    StoreWriteError = getattr(store_module, "StoreWriteError", ())
    values = small_sweep("full", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", shots=[1, 2], seeds=[1, 2], lrs=[1e-3])
    values["base"]["out"] = str(tmp_path / "runs" / "{run_id}")
    store = ResultStore(tmp_path / "r.sqlite")
    original = ResultStore.insert_many

    def full(self, records):
        records = list(records)
        if len(self) >= 1:  # the first run gets in, then the disk is full
            raise sqlite3.OperationalError("database or disk is full")
        return original(self, records)

    monkeypatch.setattr(ResultStore, "insert_many", full)
    trained = _count_trainings(monkeypatch)
    with pytest.raises(Exception) as caught:
        run_sweep(values, store, progress=False)
    assert isinstance(caught.value, StoreWriteError), caught.value
    message = str(caught.value)
    assert "\n" not in message and str(store.path) in message and "disk is full" in message
    assert len(store) == 1
    first = list(trained)
    assert 2 <= len(first) < 4  # it stopped taking runs: at least one finished run is unsaved

    monkeypatch.setattr(ResultStore, "insert_many", original)
    trained.clear()
    summary = run_sweep(values, store, progress=False)
    assert len(store) == 4 and store.records()["run_id"].is_unique
    assert not set(trained) & set(first)  # nothing finished before was trained again
    assert len(trained) == 4 - len(first) and summary.failed == []


def test_a_finished_run_directory_is_read_back_instead_of_retrained(synthetic_data,
                                                                    tiny_model_names, tmp_path,
                                                                    monkeypatch):
    """A sweep killed after publishing runs but before recording them (or whose store write
    failed with no record kept) gets them from their directories on resume."""
    values = small_sweep("dirs", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", method="linear", shots=[1, 2], seeds=[1, 2],
                         lrs=[1e-2])
    values["base"]["out"] = str(tmp_path / "runs" / "{run_id}")
    first = ResultStore(tmp_path / "first.sqlite")
    run_sweep(values, first, progress=False)
    expected = first.records().set_index("run_id").sort_index()

    trained = _count_trainings(monkeypatch)
    store = ResultStore(tmp_path / "second.sqlite")  # knows none of the runs
    # one directory holds another config's run (an older sweep): that run is trained again
    stale = Path(expected["out_dir"].iloc[0])
    config = yaml.safe_load((stale / "config.yaml").read_text())
    config["optim"]["weight_decay"] = 0.123
    (stale / "config.yaml").write_text(yaml.safe_dump(config))
    summary = run_sweep(values, store, progress=False)
    assert len(summary.recovered) == 3 and summary.completed == [expected.index[0]]
    assert trained == [str(stale)]
    got = store.records().set_index("run_id").sort_index()
    assert list(got.index) == list(expected.index)
    for column in ("test_accuracy", "val_accuracy", "val_loss", "trainable_params"):
        assert list(got[column]) == pytest.approx(list(expected[column]), nan_ok=True)
    recovered = store.get(summary.recovered[0])
    assert recovered["config"] == first.get(summary.recovered[0])["config"]


def test_two_sweeps_on_one_store_train_each_run_once(synthetic_data, tiny_model_names, tmp_path,
                                                     monkeypatch):
    import threading

    values = small_sweep("twice", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", shots=[1, 2], seeds=[1, 2, 3], lrs=[1e-3])
    planned = {r.run_id for r in load_sweep(values).runs()}
    start = threading.Barrier(2)
    summaries: dict[str, object] = {}
    errors: list[BaseException] = []

    def sweep(name: str) -> None:
        try:
            summaries[name] = run_sweep(values, tmp_path / "r.sqlite", progress=False,
                                        worker_setup=lambda: start.wait(30))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=sweep, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    a, b = summaries["a"], summaries["b"]
    assert not set(a.completed) & set(b.completed)  # no run trained twice
    assert set(a.completed) | set(b.completed) == planned
    assert a.completed and b.completed  # both did a share
    assert set(a.done_elsewhere) <= set(b.completed) and set(b.done_elsewhere) <= set(a.completed)
    assert a.not_run == [] and b.not_run == [] and a.failed == [] and b.failed == []
    store = ResultStore(tmp_path / "r.sqlite")
    assert len(store) == len(planned) and store.leases().empty


def test_a_dead_workers_lease_is_taken_over(synthetic_data, tiny_model_names, tmp_path):
    import time as clock

    values = small_sweep("takeover", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", shots=[1], seeds=[1, 2], lrs=[1e-3])
    runs = [r.run_id for r in load_sweep(values).runs()]
    store = ResultStore(tmp_path / "r.sqlite")
    # a worker on another machine claimed the first run, then stopped heartbeating
    store.claim([runs[0]], "lost-host:4242:feed", ttl=1.5)
    started = clock.monotonic()
    summary = run_sweep(values, store, progress=False)
    assert sorted(summary.completed) == sorted(runs) and summary.not_run == []
    assert summary.completed[-1] == runs[0]  # waited for the lease, then took it
    assert clock.monotonic() - started >= 1.0
    assert store.leases().empty


def _fault_script(name: str):
    """scripts/NAME.py imported as a module (the scripts folder is no package)."""
    import importlib.util

    path = HERE.parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fault_injection_script_runs(tmp_path):
    """scripts/fault_injection.py with two kills, one uniform over the work (SIGKILL) and one
    aimed at the first store commit (SIGTERM): it exits 0, the phase of each kill is read from
    the sweep's phase log, nothing is lost or trained again, the store is intact, and two
    processes on one store train each run once."""
    import json

    script = HERE.parents[1] / "scripts" / "fault_injection.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    figures_file = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(script), "--kills", "2", "--work-seconds", "1.5",
                           "--workdir", str(tmp_path / "work"), "--json", str(figures_file)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(figures_file.read_text())
    assert figures["kills"] == {"SIGKILL": 1, "SIGTERM": 1}
    uniform, aimed = [r for r in figures["per_round"] if r["killed"]]
    assert uniform["mode"] == "uniform" and aimed["mode"] == "phase"
    assert aimed["target"] == aimed["phase"] == "store commit"  # hit at its start
    assert sum(n["uniform"] + n["aimed"] for n in figures["kills_by_phase"].values()) == 2
    assert figures["kills_by_phase"]["store commit"]["aimed"] == 1
    assert figures["runs_expected"] == figures["runs_in_store"] > 0 and figures["lost"] == 0
    assert figures["trained_again_after_publishing"] == 0
    assert figures["store_rows_without_run_folder"] == 0
    assert figures["integrity_check"] == ["ok"]
    pair = figures["two_processes"]
    assert pair["trained_twice"] == 0 and pair["not_trained"] == 0 and pair["lost"] == 0
    assert sum(pair["trained_by_each"]) + pair["read_back"] == pair["expected"]
    assert "phase the kill landed in" in done.stdout and "PRAGMA integrity_check:" in done.stdout


def test_fault_phase_log_tells_the_phase_and_work_done_twice(tmp_path):
    """The fault-injection script's reading of a phase log: the phase at a time (a lease
    renewal in flight first, else the innermost span, else the observer's phase), and a run
    started again after it was published counted as trained again (the store cannot show it:
    run_id is its primary key), while a run redone after a kill in flight is not."""
    fp = _fault_script("fault_phases")
    log = tmp_path / "phases.log"
    log.write_text("\n".join([
        "1.0 7 MainThread B run-folder_staging r1", "1.1 7 MainThread E run-folder_staging r1",
        "1.2 7 MainThread P training", "1.3 7 MainThread B cache_write",
        "1.4 7 MainThread E cache_write", "1.5 7 cytotune-lease-heartbeat B lease_renewal",
        "1.6 7 cytotune-lease-heartbeat E lease_renewal",
        "1.7 7 MainThread B publishing_the_run_folder r1",
        "1.8 7 MainThread E publishing_the_run_folder r1",
        "2.0 8 MainThread B run-folder_staging r2",  # r2 killed in flight, redone: fine
        "3.0 9 MainThread B run-folder_staging r2", "3.1 9 MainThread B run-folder_staging r1",
        "3.2 9 MainThread B stor"]))  # a last line without its end: not read
    marks = fp.read_log(log)
    assert len(marks) == 12
    assert fp.phase_at(marks, 7, 0.5) == fp.START_UP
    assert fp.phase_at(marks, 7, 1.25) == "training"
    assert fp.phase_at(marks, 7, 1.35) == "cache write"
    assert fp.phase_at(marks, 7, 1.55) == fp.LEASE_RENEWAL
    assert fp.phase_at(marks, 7, 1.75) == "publishing the run folder"
    assert fp.phase_at(marks, 7, 1.9) == "after publishing the run folder"
    again, redone = fp.trained_again(marks)
    assert again == ["r1"] and redone == ["r1", "r2"]
