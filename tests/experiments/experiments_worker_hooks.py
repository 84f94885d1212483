"""Worker set-up hooks for the multi-process sweep tests (imported by name in spawned workers,
which do not inherit the test process's registered model cards)."""
from __future__ import annotations

import os
from pathlib import Path


def register_tiny_cards() -> None:
    """Register the tiny random-init cards the tests use and leave a marker per worker."""
    from cytotune.models import register_card, tiny_card

    names = os.environ.get("CYTOTUNE_TEST_TINY_CARDS", "clip-vit-b16,uni").split(",")
    for name in names:
        register_card(tiny_card(name), replace=True)
    marks = os.environ.get("CYTOTUNE_TEST_HOOK_DIR")
    if marks:
        (Path(marks) / f"worker-{os.getpid()}").write_text("set up")


def register_tiny_cards_and_die_once() -> None:
    """As register_tiny_cards, and the first run with seed 3 (in any worker) kills its worker
    process, as a segfault or the OOM killer would."""
    register_tiny_cards()
    import cytotune.training.runner as runner

    original = runner.run_training
    flag = Path(os.environ["CYTOTUNE_TEST_HOOK_DIR"]) / "died"

    def run_training(config):
        if config.seed == 3:
            try:
                fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os._exit(17)
        return original(config)

    runner.run_training = run_training


def register_tiny_cards_and_count_attempts() -> None:
    """As register_tiny_cards, and every run asking for 50 shots leaves a marker per attempt
    (``attempt-<pid>-<n>``) before it runs (and fails: the test data sets are smaller)."""
    register_tiny_cards()
    import itertools

    import cytotune.training.runner as runner

    # every run, alone or in a group of runs, chooses its images through select_indices
    original = runner.select_indices
    counter = itertools.count()
    marks = Path(os.environ["CYTOTUNE_TEST_HOOK_DIR"])

    def select_indices(data, config):
        if config.shots == 50:
            (marks / f"attempt-{os.getpid()}-{next(counter)}").write_text("tried")
        return original(data, config)

    runner.select_indices = select_indices


def broken_setup() -> None:
    """A worker set-up that always raises."""
    raise RuntimeError("set-up is broken")


def trace_cluster_runs() -> None:
    """As register_tiny_cards, for the two-node Ray tests: leaves markers in the hook folder
    saying which node (``CYTOTUNE_TEST_NODE``, set per node) started and finished each run and
    which image-cache keys it found (hit) or built (miss) in its cache, and whether each feature
    lookup found every feature cached (``features-<node>-hit``) or extracted some (``-miss``). A run sleeps first for
    the seconds written in ``slow-<node>`` in the hook folder, if that file exists (so a test can
    kill a node or the driver while runs are in flight)."""
    register_tiny_cards()
    import time
    import uuid

    import cytotune.training.runner as runner
    from cytotune.data.image_store import ImageStore

    marks = Path(os.environ["CYTOTUNE_TEST_HOOK_DIR"])
    node = os.environ.get("CYTOTUNE_TEST_NODE", "unknown")
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()[:8]
    except Exception:  # noqa: BLE001 - not in a Ray worker
        node_id = "none"
    (marks / f"node-{node}-{node_id}").write_text(str(os.getpid()))

    def mark(kind: str, what: str) -> None:
        (marks / f"{kind}-{node}-{what}-{uuid.uuid4().hex[:8]}").write_text(str(os.getpid()))

    original_run = runner.run_training

    def run_training(config):
        what = f"s{config.shots}-seed{config.seed}-lr{config.optim.lr:g}"
        mark("start", what)
        slow = marks / f"slow-{node}"
        if slow.exists():
            time.sleep(float(slow.read_text()))
        result = original_run(config)
        mark("done", what)
        return result

    runner.run_training = run_training
    original_get = ImageStore.get

    def get(self, *args, **kwargs):
        hits = self.hits
        decoded = original_get(self, *args, **kwargs)
        if self.cache_dir is not None:
            mark("hit" if self.hits > hits else "miss", decoded.key)
        return decoded

    ImageStore.get = get
    from cytotune.training.features import FeatureCache

    original_features = FeatureCache.features

    def features(self, *args, **kwargs):
        out = original_features(self, *args, **kwargs)
        mark("features", "hit" if out[2] else "miss")  # out[2]: nothing had to be extracted
        return out

    FeatureCache.features = features
