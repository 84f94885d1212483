"""Sweeps through the Ray executor on a local Ray instance (2 CPUs, started once per module)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")  # a guard only: CI installs ray (the `test` extra)

from cytotune.experiments import ResultStore, get_executor, load_sweep, run_sweep  # noqa: E402
from cytotune.experiments.executors import RunTask  # noqa: E402
from cytotune.experiments.ray_executor import RayExecutor  # noqa: E402
from experiments_helpers import small_sweep  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-hooks")


@pytest.fixture(scope="module")
def local_ray(hook_dir):
    """A local Ray instance whose workers can import the test hooks and find the hook folder."""
    if ray.is_initialized():
        ray.shutdown()
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "CYTOTUNE_TEST_HOOK_DIR": str(hook_dir), "CYTOTUNE_TEST_TINY_CARDS": "uni",
           "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


def test_sweep_on_ray_matches_the_local_executor(local_ray, synthetic_data, tiny_model_names,
                                                 tmp_path):
    values = small_sweep("on-ray", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", shots=[1, 2], seeds=[1, 2], lrs=[1e-3])
    store = ResultStore(tmp_path / "ray.sqlite")
    summary = run_sweep(values, store, executor="ray", progress=False)
    assert summary.failed == [] and summary.not_run == [] and len(summary.completed) == 4
    records = store.records()
    assert len(records) == 4 and records["run_id"].is_unique
    # the runs ran in Ray workers, not in this process
    assert not any(w.endswith(f":{os.getpid()}") for w in records["worker"])
    assert set(records["device"]) == {"cpu"}

    local_store = ResultStore(tmp_path / "local.sqlite")
    local = run_sweep(values, local_store, progress=False)
    assert sorted(local.completed) == sorted(summary.completed)
    local_records = local_store.records().set_index("run_id").sort_index()
    ray_records = records.set_index("run_id").sort_index()
    assert list(local_records.index) == list(ray_records.index)
    assert list(ray_records["test_accuracy"]) == pytest.approx(list(local_records["test_accuracy"]))
    # nothing left to do, whichever executor resumes
    again = run_sweep(values, store, executor="ray", progress=False)
    assert again.completed == [] and again.already_done == 4


def test_a_killed_worker_is_retried_by_ray_and_its_run_lands_once(local_ray, hook_dir,
                                                                   synthetic_data,
                                                                   tiny_model_names, tmp_path):
    values = small_sweep("ray-dies", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", shots=[1], seeds=[1, 3], lrs=[1e-3])
    store = ResultStore(tmp_path / "r.sqlite")
    summary = run_sweep(values, store, executor="ray", progress=False,
                        worker_setup="experiments_worker_hooks:register_tiny_cards_and_die_once")
    assert (hook_dir / "died").exists()  # the seed-3 run killed its worker (os._exit) once
    assert summary.failed == [] and summary.not_run == []
    assert sorted(summary.completed) == sorted(r.run_id for r in load_sweep(values).runs())
    records = store.records()
    assert len(records) == 2 and records["run_id"].is_unique
    assert len(store.failures()) == 0
    assert list(hook_dir.glob("worker-*"))  # the set-up hook ran in the Ray workers


def test_a_run_failing_every_time_is_recorded_and_the_sweep_goes_on(local_ray, hook_dir,
                                                                   synthetic_data,
                                                                   tiny_model_names, tmp_path):
    # 12 images per class: 50 shots cannot be drawn, the run raises a DataError every time; the
    # linear runs of one (data set, backbone) are one chunk, so the good ones share its task
    values = small_sweep("ray-fails", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", method="linear", shots=[1, 50, 2], seeds=[1],
                         lrs=[1e-2])
    store = ResultStore(tmp_path / "r.sqlite")
    summary = run_sweep(values, store, executor="ray", progress=False,
                        executor_options={"run_retries": 1},
                        worker_setup="experiments_worker_hooks:"
                                     "register_tiny_cards_and_count_attempts")
    assert len(summary.completed) == 2 and len(summary.failed) == 1 and summary.not_run == []
    failed_id, error = summary.failed[0]
    assert "DataError" in error
    assert len(list(hook_dir.glob("attempt-*"))) == 2  # tried, then retried once, in the worker
    failures = store.failures()
    assert list(failures["run_id"]) == [failed_id] and failures.iloc[0]["shots"] == 50
    assert "Traceback" in failures.iloc[0]["traceback"]
    assert len(store) == 2 and failed_id not in store.done_ids()


def test_a_ray_task_that_finally_fails_becomes_failed_runs(local_ray, synthetic_data,
                                                           tiny_model_names, tmp_path):
    # a worker set-up that raises: Ray retries the task (retry_exceptions), then gives up; the
    # chunk's runs are recorded as failed, each once, and the sweep returns
    values = small_sweep("ray-setup", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", method="linear", shots=[1, 2], seeds=[1],
                         lrs=[1e-2])
    store = ResultStore(tmp_path / "r.sqlite")
    with pytest.raises(ValueError):  # a bad set-up name fails at once, in the driver
        RayExecutor(worker_setup="experiments_worker_hooks:no_such_hook_at_all")
    executor = RayExecutor(worker_setup="experiments_worker_hooks:broken_setup", max_retries=1)
    summary = run_sweep(values, store, executor=executor, progress=False)
    assert summary.completed == [] and len(summary.failed) == 2 and summary.not_run == []
    assert all("RayTaskFailed" in e and "set-up is broken" in e for _, e in summary.failed)
    failures = store.failures()
    assert len(failures) == 2 and failures["run_id"].is_unique and len(store) == 0


def test_resource_requests_and_registration():
    cpu_task = RunTask("a", {}, {"device": "cpu"})
    auto_task = RunTask("b", {}, {"device": "auto"})
    cuda_task = RunTask("c", {}, {"device": "cuda:1"})
    with_gpus = RayExecutor(use_gpus=True)
    assert with_gpus._plan([auto_task])[:2] == ({"num_gpus": 1.0, "num_cpus": 1.0}, "cuda")
    assert with_gpus._plan([cuda_task])[:2] == ({"num_gpus": 1.0, "num_cpus": 1.0}, "cuda")
    assert with_gpus._plan([cpu_task])[:2] == ({"num_cpus": 1.0}, None)
    half = RayExecutor(use_gpus=True, gpus_per_run=0.5, cpus_per_run=2)
    assert half._plan([auto_task])[0] == {"num_gpus": 0.5, "num_cpus": 2.0}
    no_gpus = RayExecutor()  # the cluster has no GPUs (nothing connected yet: 0)
    assert no_gpus._plan([auto_task])[:2] == ({"num_cpus": 1.0}, "cpu")
    assert RayExecutor(devices=["cpu"], use_gpus=True)._plan([auto_task])[:2] == (
        {"num_cpus": 1.0}, "cpu")
    with pytest.raises(ValueError):
        RayExecutor(devices=["cuda:0", "cuda:1"])
    assert isinstance(get_executor("ray", address="ray://head:10001"), RayExecutor)
    # importing the package does not import ray
    code = "import sys, cytotune.experiments; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_address_option():
    import argparse

    from cytotune.experiments.cli import register

    parser = argparse.ArgumentParser(prog="cytotune")
    commands = register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", "x.yaml", "--executor", "ray", "--address",
                              "ray://head:10001", "--executor-option", "gpus_per_run=0.5"])
    assert args.address == "ray://head:10001"
    assert dict(args.executor_options) == {"gpus_per_run": 0.5}
    args = parser.parse_args(["sweep", "x.yaml", "--address", "ray://head:10001"])
    with pytest.raises(ValueError, match="--executor ray"):
        commands["sweep"](args)
