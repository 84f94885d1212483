#!/usr/bin/env python
"""Kill a small sweep at random points, resume it, then run two copies of it on one store.

What it shows (issue 16): a sweep killed at any moment (SIGKILL and SIGTERM, alternately) and
resumed loses no run, records none twice, leaves no partial file behind and keeps its SQLite
store intact; two sweep processes on one store split the runs (each run trained once).

Each *round* runs the sweep from scratch (fresh store, run directories and cache) as
``cytotune sweep`` processes: one is started, killed after a random delay, and started again,
until it finishes without being killed; rounds repeat until ``--kills`` kills were made. A kill
comes a random time after the process claimed its first runs in the store (a lease of its pid):
uniform over the work still left (the time an uninterrupted sweep works, measured first, times
the share of runs not yet in the store), so kills land in the sweep's work (training, cache and
run-directory writes, store commits), not in its imports. Each round is
then checked: runs expected (the sweep's plan), runs in the store, duplicated rows, lost runs.
At the end, leftovers are counted under every round's folders (hidden ``.*.partial-*`` /
``.*.old-*`` staging folders, ``*.tmp`` files, kept-records folders of the store) and
``PRAGMA integrity_check`` is run on every store. Then two sweep processes run at once on one
fresh store and report which runs each trained.

    python scripts/fault_injection.py                # a quick check: 5 kills
    python scripts/fault_injection.py --kills 50     # the issue's target (several minutes)

Exit code 0 when every figure meets the target (0 lost, 0 duplicated, 0 leftovers, integrity
ok, each run trained once by the two processes), else 1. ``--json FILE`` writes the figures.
The sweep is tiny (a random-init ``uni-tiny`` backbone, 32 px generated images, linear probes
and LoRA, 18 runs), so a kill cycle takes a few seconds, most of it Python and torch starting.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import yaml

TWO_PROCESS_CHILD = """
import json, sys
import torch
torch.set_num_threads(1)
from cytotune.experiments import run_sweep
s = run_sweep(sys.argv[1], sys.argv[2], progress=False)
print("SUMMARY " + json.dumps({"completed": s.completed, "recovered": s.recovered,
                               "done_elsewhere": s.done_elsewhere, "failed": s.failed,
                               "not_run": s.not_run}))
"""


def sweep_values(data: Path, root: Path) -> dict[str, Any]:
    """The tiny sweep: 12 linear probes (one chunk) and 6 LoRA runs on a random-init tiny ViT."""
    return {
        "name": "fault_injection",
        "datasets": {"gen": {"source": str(data)}},
        "backbones": ["uni-tiny"],
        "method": ["linear", "lora"],
        "shots": [1, 2],
        "seeds": [1, 2, 3],
        "lrs": {"linear": [1e-3, 1e-2], "lora": [1e-3]},
        "base": {"model": {"pretrained": False},
                 "optim": {"steps": 4, "val_every": 2, "batch_size": 8},
                 "lora": {"rank": 2}, "num_workers": 0, "device": "cpu",
                 "cache_dir": str(root / "cache"), "out": str(root / "runs" / "{run_id}")},
    }


def child_env() -> dict[str, str]:
    """The children import the cytotune this script imports, on one torch thread."""
    import cytotune

    src = str(Path(cytotune.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


def write_sweep(root: Path, data: Path) -> tuple[Path, list[str]]:
    from cytotune.experiments import load_sweep

    root.mkdir(parents=True, exist_ok=True)
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_values(data, root), sort_keys=False))
    return path, [r.run_id for r in load_sweep(path).runs()]


def start_sweep(sweep: Path, store: Path, log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "cytotune.cli", "sweep", str(sweep),
                                 "--store", str(store), "--quiet"], stdout=out,
                                stderr=subprocess.STDOUT, env=child_env(), cwd=sweep.parent)
    finally:
        out.close()


def wait(proc: subprocess.Popen, timeout: float) -> Optional[int]:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def done_count(store: Path) -> int:
    if not store.exists():
        return 0
    con = sqlite3.connect(store)
    try:
        return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def wait_for_work(proc: subprocess.Popen, store: Path, timeout: float) -> bool:
    """Wait until ``proc`` holds a lease in ``store`` (it is working); False when it ended (or
    the timeout passed) first."""
    import socket

    owner = f"{socket.gethostname()}:{proc.pid}:%"
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if store.exists():
            try:
                con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1.0)
                try:
                    if con.execute("SELECT 1 FROM leases WHERE owner LIKE ?", (owner,)).fetchone():
                        return True
                finally:
                    con.close()
            except sqlite3.Error:
                pass  # not created yet, or busy
        time.sleep(0.02)
    return False


def sweep_seconds(log: Path) -> float:
    """The time the last sweep reported working (its summary line ends with '; N s')."""
    import re

    found = re.findall(r"; ([0-9.]+) s\s*$", log.read_text(errors="replace"), re.M)
    if not found:
        raise RuntimeError(f"no sweep summary line in {log}")
    return float(found[-1])


def store_figures(store: Path, planned: list[str]) -> dict[str, Any]:
    con = sqlite3.connect(store)
    try:
        ids = [r[0] for r in con.execute("SELECT run_id FROM runs")]
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()
    return {"expected": len(planned), "in_store": len(ids),
            "duplicates": len(ids) - len(set(ids)) + len(set(ids) - set(planned)),
            "lost": len(set(planned) - set(ids)), "integrity_check": integrity}


def leftovers(root: Path, store: Path) -> list[str]:
    """Partial files a killed process left behind: staging folders of run directories, ``*.tmp``
    files (cache entries, kept records) and the store's kept-records folders."""
    from cytotune.experiments.store_records import pending_dirs

    found = []
    for path in root.rglob("*"):
        name = path.name
        if (path.is_dir() and name.startswith(".") and (".partial-" in name or ".old-" in name)) \
                or (path.is_file() and name.endswith(".tmp")):
            found.append(str(path))
    found += [str(p) for p in pending_dirs(store) if p.exists()]
    return sorted(found)


def run_round(root: Path, data: Path, kills_left: int, work: float, rng: random.Random,
              next_signal: list[int], timeout: float) -> dict[str, Any]:
    """One sweep from scratch, killed until it finishes (or ``kills_left`` kills were made, then
    run to the end)."""
    sweep, planned = write_sweep(root, data)
    store, log = root / "results.sqlite", root / "sweeps.log"
    kills = {"SIGKILL": 0, "SIGTERM": 0}
    while True:
        left = 1.0 - done_count(store) / max(1, len(planned))
        proc = start_sweep(sweep, store, log)
        if sum(kills.values()) >= kills_left:
            code = wait(proc, timeout)
            break
        if not wait_for_work(proc, store, timeout):
            code = wait(proc, timeout)
            break
        code = wait(proc, rng.uniform(0.0, max(0.2, work * left)))
        if code is not None:  # finished before the kill
            break
        sig = next_signal[0]
        next_signal[0] = signal.SIGTERM if sig == signal.SIGKILL else signal.SIGKILL
        proc.send_signal(sig)
        kills[signal.Signals(sig).name] += 1
        if wait(proc, 60.0) is None:  # a SIGTERM not obeyed within a minute
            proc.kill()
            proc.wait()
    if code != 0:
        raise RuntimeError(f"the sweep in {root} ended with code {code}; see {log}")
    return {"root": str(root), "kills": kills, **store_figures(store, planned),
            "leftovers": leftovers(root, store)}


def two_processes(root: Path, data: Path, timeout: float) -> dict[str, Any]:
    """Two sweep processes at once on one fresh store: which runs each trained."""
    sweep, planned = write_sweep(root, data)
    store = root / "results.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_CHILD, str(sweep), str(store)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(),
                              cwd=root) for _ in range(2)]
    summaries = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        text = out.decode(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("SUMMARY ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"a sweep process failed (code {proc.returncode}):\n{text[-3000:]}")
        summaries.append(json.loads(line[len("SUMMARY "):]))
    a, b = (set(s["completed"]) for s in summaries)
    return {"expected": len(planned), **{k: v for k, v in store_figures(store, planned).items()
                                         if k != "expected"},
            "trained_by_each": [len(a), len(b)], "trained_twice": len(a & b),
            "not_trained": len(set(planned) - (a | b)),
            "read_back": sum(len(s["recovered"]) for s in summaries),
            "leftovers": leftovers(root, store)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5, help="kills to make (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to work (default: a temporary folder, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds one uninterrupted sweep may take")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--work-seconds", type=float, default=None,
                        help="how long an uninterrupted sweep works (skips measuring it with a "
                             "first, unkilled sweep)")
    args = parser.parse_args(argv)
    if args.kills < 0:
        parser.error("--kills must be >= 0")

    import shutil

    from cytotune.data import generate_cytology_dataset

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cytotune-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    try:
        data = work / "data"
        if not data.exists():
            generate_cytology_dataset(data, n_per_class=12, image_size=32, seed=0)
        # an uninterrupted sweep: how long its process starts and how long it works
        calibrated = []
        if args.work_seconds is None:
            t0 = time.perf_counter()
            calibrated.append(run_round(work / "calibration", data, 0, 0.0, rng,
                                        [signal.SIGKILL], args.timeout))
            total_s = time.perf_counter() - t0
            work_s = sweep_seconds(work / "calibration" / "sweeps.log")
            startup_s = max(0.0, total_s - work_s)
        else:
            work_s, startup_s = float(args.work_seconds), float("nan")
        rounds, next_signal = [], [signal.SIGKILL]
        while sum(sum(r["kills"].values()) for r in rounds) < args.kills or not rounds:
            made = sum(sum(r["kills"].values()) for r in rounds)
            if len(rounds) > 3 * args.kills + 3:
                raise RuntimeError(f"only {made} kills in {len(rounds)} rounds: the sweep "
                                   f"finishes before a kill lands")
            rounds.append(run_round(work / f"round-{len(rounds) + 1:03d}", data,
                                    args.kills - made, work_s, rng, next_signal, args.timeout))
        pair = two_processes(work / "two-processes", data, args.timeout)
        seconds = time.perf_counter() - started
        kills = {s: sum(r["kills"][s] for r in rounds) for s in ("SIGKILL", "SIGTERM")}
        total = {k: sum(r[k] for r in rounds) for k in ("expected", "in_store", "duplicates",
                                                        "lost")}
        left = [p for r in (*calibrated, *rounds) for p in r["leftovers"]] + pair["leftovers"]
        integrity = sorted({r["integrity_check"] for r in (*calibrated, *rounds)}
                           | {pair["integrity_check"]})
        figures = {"kills": kills, "rounds": len(rounds), "runs_per_sweep": rounds[0]["expected"],
                   "startup_s": round(startup_s, 1), "work_s": round(work_s, 1),
                   **{f"runs_{k}" if k in ("expected", "in_store") else k: v
                      for k, v in total.items()},
                   "leftover_partial_files": len(left), "leftovers": left,
                   "integrity_check": integrity, "two_processes": pair,
                   "seconds": round(seconds, 1)}
        print(f"fault injection: {sum(kills.values())} kills ({kills['SIGKILL']} SIGKILL, "
              f"{kills['SIGTERM']} SIGTERM) in {len(rounds)} rounds of a {rounds[0]['expected']}"
              f"-run sweep (a sweep process: {startup_s:.1f} s start-up, {work_s:.1f} s work; "
              f"kills at U(0, work left) after its first claim), {seconds:.0f} s in all")
        print(f"runs expected:           {total['expected']}")
        print(f"runs in the store:       {total['in_store']}")
        print(f"duplicates:              {total['duplicates']}")
        print(f"lost runs:               {total['lost']}")
        print(f"leftover partial files:  {len(left)}")
        for path in left[:20]:
            print(f"  {path}")
        print(f"PRAGMA integrity_check:  {', '.join(integrity)}")
        print(f"two processes, one store: {pair['expected']} runs expected, {pair['in_store']} "
              f"in the store, trained {pair['trained_by_each'][0]} + "
              f"{pair['trained_by_each'][1]}, trained twice {pair['trained_twice']}, not trained "
              f"{pair['not_trained']}, read back {pair['read_back']}, duplicates "
              f"{pair['duplicates']}, integrity {pair['integrity_check']}")
        if args.json is not None:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        ok = (total["lost"] == 0 and total["duplicates"] == 0 and not left
              and integrity == ["ok"] and pair["trained_twice"] == 0
              and pair["not_trained"] == 0 and pair["lost"] == 0 and pair["duplicates"] == 0)
        return 0 if ok else 1
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.workdir is None:
            print(f"work folder kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
