"""What a cluster user meets: sweeps on a two-node Ray cluster started with `ray start` on the
loopback address (a head and a worker node, 1 CPU each, each with its own working directory,
environment and image/feature cache), the sweep driver a `cytotune sweep --executor ray
--address ...` subprocess, nodes and driver killed by pid.

The nodes are started once for the module; the test that kills the worker node runs last.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import pytest

try:
    import ray  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("the two-node Ray tests need Ray (pip install 'cytotune[ray]')",
                allow_module_level=True)

from cytotune.experiments import ResultStore  # noqa: E402
from cytotune.experiments.ray_executor import node_of  # noqa: E402
from experiments_helpers import small_sweep  # noqa: E402

HERE = Path(__file__).resolve().parent
HOOK = "experiments_worker_hooks:trace_cluster_runs"
RAY_CLI = "import sys; from ray.scripts.scripts import main; sys.exit(main())"
CYTOTUNE_CLI = "import sys; from cytotune.cli import main; sys.exit(main())"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``: everything a `ray start` launched."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def _kill_session(sid: int) -> None:
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while _session_pids(sid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


class Cluster:
    """Two `ray start` nodes, each in its own session (so teardown kills exactly their
    processes, never another Ray of this user as `ray stop` would)."""

    def __init__(self, root: Path, hooks: Path):
        self.root, self.hooks = root, hooks
        self.temp = Path(tempfile.mkdtemp(prefix="ctray", dir="/tmp"))  # short: Unix sockets
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head_cwd, self.worker_cwd = root / "head-node", root / "worker-node"
        self.worker_cache = root / "worker-node-local-disk" / "cache"
        self.sessions: dict[str, int] = {}
        self.drivers: list[subprocess.Popen] = []
        # RAY_AUTH_MODE the same everywhere: with a ~/.ray/auth_token a head turns token
        # authentication on, and a worker node started without the setting is refused
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
                    "CYTOTUNE_TEST_HOOK_DIR": str(hooks), "CYTOTUNE_TEST_TINY_CARDS": "uni",
                    "OMP_NUM_THREADS": "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop("CYTOTUNE_NODE_CACHE", None)

    def _start(self, node: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        ports = ["--dashboard-agent-listen-port", str(_free_port()), "--runtime-env-agent-port",
                 str(_free_port()), "--metrics-export-port", str(_free_port())]
        proc = subprocess.Popen([sys.executable, "-c", RAY_CLI, "start", *args, *ports,
                                 "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                                 "--num-gpus", "0", "--disable-usage-stats"],
                                cwd=cwd, env={**self.env, "CYTOTUNE_TEST_NODE": node, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        self.sessions[node] = proc.pid  # a new session's id is its leader's pid
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start ({node}) failed:\n{out[-3000:]}")

    def start(self) -> None:
        self._start("head", ["--head", "--port", str(self.port), "--temp-dir", str(self.temp),
                             "--include-dashboard", "false", "--dashboard-port",
                             str(_free_port()), "--resources", json.dumps({"head": 1})],
                    {}, self.head_cwd)
        self._start("worker", ["--address", self.address,
                               "--resources", json.dumps({"worker_node": 1})],
                    {"CYTOTUNE_NODE_CACHE": str(self.worker_cache)}, self.worker_cwd)

    def raylet_pid(self, node: str) -> int:
        for pid in _session_pids(self.sessions[node]):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
            except OSError:
                continue
        raise AssertionError(f"no raylet process on the {node} node")

    def stop(self) -> None:
        for sid in self.sessions.values():
            _kill_session(sid)
        subprocess.run(["rm", "-rf", str(self.temp)], check=False)

    # ---- the sweep driver
    def driver(self, sweep_file: Path, store: Path, cwd: Path, log: Path,
               verbose: bool = False) -> subprocess.Popen:
        cwd.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "CYTOTUNE_TEST_NODE": "driver",
               # a dead driver's leases must not block its restart: a 10-minute TTL makes any
               # wait for them expiring time the test out
               "CYTOTUNE_LEASE_TTL": "600"}
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-c", CYTOTUNE_CLI,
                                     *(["-v"] if verbose else []), "sweep", str(sweep_file),
                                     "--store", str(store), "--executor", "ray", "--address",
                                     self.address, "--worker-setup", HOOK, "--quiet"],
                                    cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.drivers.append(proc)
        return proc

    def stop_drivers(self) -> None:
        """Kill the drivers a failed test left running."""
        for proc in self.drivers:
            if proc.poll() is None:
                _kill_session(proc.pid)
                proc.wait()
        self.drivers.clear()

    def nodes(self) -> dict[str, str]:
        """Short Ray node id -> "head" / "worker", from the markers the hook leaves."""
        out = {}
        for mark in self.hooks.glob("node-*"):
            _, name, node_id = mark.name.split("-", 2)
            out[node_id] = name
        return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    hooks = root / "hooks"
    hooks.mkdir()
    nodes = Cluster(root, hooks)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
    left = [pid for sid in nodes.sessions.values() for pid in _session_pids(sid)]
    assert not left, f"processes of the test's Ray nodes left running: {left}"


@pytest.fixture
def hooks(cluster):
    """The hook folder, emptied of the previous test's run markers; the test's drivers are
    killed afterwards if still running."""
    for mark in cluster.hooks.iterdir():
        if not mark.name.startswith("node-"):
            mark.unlink()
    yield cluster.hooks
    cluster.stop_drivers()


def _sweep_file(path: Path, values: dict) -> Path:
    path.write_text(json.dumps(values))  # JSON is YAML
    return path


def _marks(hooks: Path, kind: str) -> list[tuple[str, str]]:
    """(node, what) of each ``<kind>-<node>-<what>-<uuid>`` marker."""
    out = []
    for mark in hooks.glob(f"{kind}-*"):
        _, node, rest = mark.name.split("-", 2)
        out.append((node, rest.rsplit("-", 1)[0]))
    return out


def _finish(proc: subprocess.Popen, log: Path, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"sweep driver still running after {timeout:.0f} s:\n"
                             f"{log.read_text()[-3000:]}")
    assert proc.returncode == 0, log.read_text()[-3000:]


def _nodes_of(records, cluster: Cluster) -> list[str]:
    """The node ("head" / "worker") each record's run ran on, from its worker label."""
    names = cluster.nodes()
    return [names.get(node_of(w) or "", f"? {w}") for w in records["worker"]]


def _per_node(store: ResultStore, cluster: Cluster) -> Counter:
    return Counter(_nodes_of(store.records(), cluster))


def _run_key(record) -> str:
    return f"s{record['shots']}-seed{record['seed']}-lr{record['lr']:g}"


def test_sweep_spreads_over_both_nodes_and_each_node_keeps_its_own_cache(
        cluster, hooks, synthetic_data, tiny_model_names, tmp_path):
    # cache_dir is relative: resolved in each worker's working directory (the folder its node's
    # `ray start` ran in); the worker node overrides it with CYTOTUNE_NODE_CACHE
    values = small_sweep("two-nodes", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         Path("node-cache"), method=["lora", "linear"], shots=[1, 2],
                         seeds=[1, 2, 3], lrs=[1e-3])
    # a LoRA run takes 1.5 s more on either node, so that both nodes likely take more than one
    # task (tiny runs are done before a node's Ray worker has finished its imports)
    for node in ("head", "worker"):
        (hooks / f"slow-{node}").write_text("1.5")
    store_path, log = tmp_path / "study.sqlite", tmp_path / "driver.log"
    start = time.monotonic()
    driver = cluster.driver(_sweep_file(tmp_path / "sweep.yaml", values), store_path,
                            tmp_path / "driver-cwd", log, verbose=True)
    _finish(driver, log, timeout=150)
    store = ResultStore(store_path)
    records = store.records()
    assert len(records) == 12 and records["run_id"].is_unique and len(store.failures()) == 0
    per_node = _per_node(store, cluster)
    print(f"\nruns per node: {dict(per_node)} ({time.monotonic() - start:.1f} s)")
    assert set(per_node) == {"head", "worker"} and min(per_node.values()) > 0
    # the driver's log line says the same
    (line,) = [x for x in log.read_text().splitlines() if "runs finished per ray node" in x]
    names = cluster.nodes()
    logged = Counter({names[part.split()[0]]: int(part.rsplit(":", 1)[1])
                      for part in line.split("node: ", 1)[1].split(", ")})
    assert logged == per_node, line

    head_cache = cluster.head_cwd / "node-cache"
    worker_cache = cluster.worker_cache
    # nobody used the sweep's folder as the driver resolves it, nor the worker node's relative one
    assert not (tmp_path / "driver-cwd" / "node-cache").exists()
    assert not (cluster.worker_cwd / "node-cache").exists()
    hits, misses = Counter(_marks(hooks, "hit")), Counter(_marks(hooks, "miss"))
    lora_runs = Counter(_nodes_of(records[records["method"] == "lora"], cluster))
    assert max(lora_runs.values()) >= 2  # 6 LoRA tasks on 2 nodes
    for node, cache in (("head", head_cache), ("worker", worker_cache)):
        built = {key for (n, key) in misses if n == node}
        # each node decoded an image set once, into its own cache, and read it from there after
        assert all(count == 1 for (n, _), count in misses.items() if n == node), misses
        assert {p.stem for p in (cache / "images").glob("*.npy")} == built
        assert all(key in built for (n, key) in hits if n == node)
        if lora_runs[node] >= 2:  # a later LoRA task found the validation and test images
            assert sum(c for (n, _), c in hits.items() if n == node) > 0, (node, hits)
    if min(lora_runs[node] for node in ("head", "worker")) > 0:
        # both nodes decoded the validation and test images: neither node's cache was
        # assumed to be visible on the other
        assert {k for n, k in misses if n == "head"} & {k for n, k in misses if n == "worker"}
    # the features of the linear probes (one task) are in the cache of the node that ran them
    linear_nodes = set(_nodes_of(records[records["method"] == "linear"], cluster))
    assert len(linear_nodes) == 1
    for node, cache in (("head", head_cache), ("worker", worker_cache)):
        assert any((cache / "features").glob("*")) == (node in linear_nodes)
    print(f"LoRA runs per node {dict(lora_runs)}, linear probes on {linear_nodes}; image-cache "
          f"hits {Counter(n for n, _ in hits.elements())}, "
          f"misses {Counter(n for n, _ in misses.elements())}")

    # a later sweep's linear probes (another learning rate, the same images): on the node that
    # extracted the features they are all found in its cache; on the other node, whose cache
    # holds none, they are extracted there (never assumed to be in another node's cache)
    (linear_node,) = linear_nodes
    for mark in hooks.glob("features-*"):
        mark.unlink()
    later = dict(values, name="two-nodes-later", method=["linear"], lrs={"linear": [1e-2]})
    driver = cluster.driver(_sweep_file(tmp_path / "later.yaml", later), store_path,
                            tmp_path / "driver-cwd", tmp_path / "later.log")
    _finish(driver, tmp_path / "later.log", timeout=120)
    later_records = ResultStore(store_path).records()
    later_records = later_records[later_records["sweep"] == "two-nodes-later"]
    assert len(later_records) == 6
    (node,) = set(_nodes_of(later_records, cluster))  # one task: the group of linear probes
    lookups = Counter(_marks(hooks, "features"))
    assert lookups and {n for n, _ in lookups} == {node}
    if node == linear_node:
        assert set(lookups) == {(node, "hit")}, lookups
    else:
        assert (node, "miss") in lookups, lookups
        assert all(any((cache / "features").glob("*")) for cache in (head_cache, worker_cache))
    print(f"later linear probes on {node} (features first extracted on {linear_node}): "
          f"{dict(lookups)}")


def test_a_killed_driver_resumes_from_the_store_without_rerunning_finished_runs(
        cluster, hooks, synthetic_data, tiny_model_names, tmp_path):
    values = small_sweep("driver-kill", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", shots=[1, 2], seeds=[1, 2, 3], lrs=[1e-3])
    sweep_file = _sweep_file(tmp_path / "sweep.yaml", values)
    for node in ("head", "worker"):
        (hooks / f"slow-{node}").write_text("1.5")
    store_path = tmp_path / "study.sqlite"
    start = time.monotonic()
    first = cluster.driver(sweep_file, store_path, tmp_path, tmp_path / "first.log")

    def some_done() -> bool:
        if first.poll() is not None:
            raise AssertionError(f"the driver ended early:\n{(tmp_path / 'first.log').read_text()}")
        return store_path.exists() and len(ResultStore(store_path)) >= 2

    _wait_for(some_done, 150, "two runs in the store")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()  # reaped: its leases name a process that is gone
    killed_at = time.monotonic()
    store = ResultStore(store_path)
    finished = {r["run_id"]: _run_key(r) for _, r in store.records().iterrows()}
    assert 2 <= len(finished) < 6, finished
    print(f"\ndriver killed after {killed_at - start:.1f} s with {len(finished)} of 6 runs stored")

    second = cluster.driver(sweep_file, store_path, tmp_path, tmp_path / "second.log")
    _finish(second, tmp_path / "second.log", timeout=150)
    print(f"restarted driver finished in {time.monotonic() - killed_at:.1f} s")
    records = store.records()
    assert len(records) == 6 and records["run_id"].is_unique and len(store.failures()) == 0
    assert f"{len(finished)} were already in the store" in (tmp_path / "second.log").read_text()
    starts = Counter(what for _, what in _marks(hooks, "start"))
    assert set(starts) == {_run_key(r) for _, r in records.iterrows()}
    # the runs stored before the kill ran once: the restart did not run them again
    assert all(starts[key] == 1 for key in finished.values()), starts


def test_a_killed_worker_node_has_its_task_retried_on_the_head(cluster, hooks, synthetic_data,
                                                               tiny_model_names, tmp_path):
    # runs on the worker node sleep until the node is killed (its raylet, by pid); Ray retries
    # the task on the head. Runs last: the worker node is gone afterwards.
    values = small_sweep("node-kill", {"gen": synthetic_data}, [tiny_model_names["uni"]],
                         tmp_path / "cache", shots=[1, 2], seeds=[1, 2], lrs=[1e-3])
    (hooks / "slow-worker").write_text("300")
    store_path, log = tmp_path / "study.sqlite", tmp_path / "driver.log"
    start = time.monotonic()
    driver = cluster.driver(_sweep_file(tmp_path / "sweep.yaml", values), store_path, tmp_path,
                            log)
    _wait_for(lambda: any(n == "worker" for n, _ in _marks(hooks, "start"))
              or driver.poll() is not None, 150, "a run to start on the worker node")
    assert driver.poll() is None, log.read_text()[-3000:]
    (lost,) = [what for node, what in _marks(hooks, "start") if node == "worker"]
    os.kill(cluster.raylet_pid("worker"), signal.SIGKILL)
    killed_at = time.monotonic()
    _finish(driver, log, timeout=150)
    print(f"\nworker node killed after {killed_at - start:.1f} s; sweep done "
          f"{time.monotonic() - killed_at:.1f} s later")
    store = ResultStore(store_path)
    records = store.records()
    assert len(records) == 4 and records["run_id"].is_unique and len(store.failures()) == 0
    assert _per_node(store, cluster) == Counter({"head": 4})  # the lost run too
    assert lost in {_run_key(r) for _, r in records.iterrows()}
    done = Counter(_marks(hooks, "done"))
    assert done[("head", lost)] == 1 and ("worker", lost) not in done
    assert Counter(what for _, what in _marks(hooks, "start"))[lost] == 2
