#!/usr/bin/env python
"""Kill a small sweep at points spread over all of its work, resume it, and check what is left;
then run two copies of it on one store.

What it shows (issues 16 and 31): a sweep killed at any moment (SIGKILL and SIGTERM, in turn)
and resumed loses no run, trains no run again once it was published, leaves no partial file
behind and keeps its SQLite store intact; two sweep processes on one store split the runs.

Each *round* runs the sweep from scratch (fresh store, run folders and cache): one ``cytotune
sweep`` process is started and killed once, then a second one finishes the sweep unkilled,
and the round is checked. Rounds take turns between two ways of choosing the kill:

* uniform: at a time drawn uniformly over the work of an unkilled sweep (from its first store
  claim to its last store release: the shortest of the last three whole sweeps seen, two
  unkilled calibration rounds first, then the first processes that did all the work, so the
  window follows the machine's load), after the killed process's own first claim;
* at a named phase: the K-th time the process enters a phase (store claim, store commit,
  lease renewal, run-folder staging, writing and publishing, cache write, decoding, features,
  training, evaluation, ...), K drawn over that phase's occurrences in the calibration sweep,
  plus a delay drawn over that occurrence's length there (0 for phases under 5 ms: hit at
  their start; a delay that outlasts the phase this time is carried to its next occurrence,
  halved), or just after a phase ended ("after publishing the run folder": published, not
  yet in the store). The phases cycle, so each one is aimed at.

The sweep processes import ``scripts/fault_phases.py`` first, which marks every phase boundary
in a per-round log (cytotune itself is not changed); the phase a kill *landed in* is read from
that log at the kill's time, whatever the plan was. The same logs give the runs trained again:
a run whose training started after it had been published is duplicate work (the store's
run_id is a primary key, so duplicates can never show there). The kill rounds run with
``CYTOTUNE_LEASE_TTL`` = ``--lease-ttl`` (1 s: a renewal every 1/3 s) so several lease
renewals happen within the short sweep and can be hit.

    python scripts/fault_injection.py                # a quick check: 5 kills
    python scripts/fault_injection.py --kills 40     # the measurement in docs/measurements.md

Exit code 0 when every figure meets the target (0 lost, 0 trained again after publishing, 0
store rows without their run folder, 0 leftovers, integrity ok, every resumed sweep ends with
0, each run trained once by the two processes), else 1. ``--json FILE`` writes the figures. The
sweep is tiny (a random-init ``uni-tiny`` backbone, 32 px generated images, linear probes and
LoRA, 18 runs), so a round takes seconds, most of it Python and torch starting.
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
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fault_phases as fp  # noqa: E402 - the phase markers, beside this script

SWEEP_CHILD = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
               "import fault_phases; fault_phases.install(); from cytotune.cli import main; "
               "sys.exit(main(sys.argv[1:]))")
# the phases kills are aimed at, in turn (the ones a uniform kill rarely hits first)
TARGETS = ("store commit", "after publishing the run folder", "publishing the run folder",
           "cache write", fp.LEASE_RENEWAL, "writing the run folder", "store claim",
           "decoding into the image cache", "features", "training", "evaluation",
           "run-folder staging", "after store commit", "store release", "decoding")
SHORT_S = 0.005  # a phase shorter than this is hit at its start (a timer would overshoot it)

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


def start_sweep(sweep: Path, store: Path, log: Path, phases: Path, lease_ttl: float,
                kill_at: str = "") -> subprocess.Popen:
    """A ``cytotune sweep`` process marking its phases in ``phases`` (killing itself at
    ``kill_at``, see scripts/fault_phases.py, when given)."""
    env = {**child_env(), fp.LOG_ENV: str(phases), "CYTOTUNE_LEASE_TTL": str(lease_ttl)}
    if kill_at:
        env[fp.KILL_ENV] = kill_at
    out = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-c", SWEEP_CHILD, "sweep", str(sweep),
                                 "--store", str(store), "--quiet"], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=sweep.parent)
    finally:
        out.close()


def wait(proc: subprocess.Popen, timeout: float) -> Optional[int]:
    try:
        return proc.wait(max(0.0, timeout))
    except subprocess.TimeoutExpired:
        return None


def wait_for_claim(proc: subprocess.Popen, phases: Path, timeout: float) -> Optional[float]:
    """The time ``proc`` began its first store claim (it is working); None when it ended (or
    the timeout passed) first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        claimed = fp.first_claim(fp.read_log(phases), proc.pid)
        if claimed is not None:
            return claimed
        time.sleep(0.05)
    return None


def finish(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    code = wait(proc, timeout)
    if code is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"a sweep process ran past --timeout {timeout:.0f} s; see {log}")
    return code


def run_round(root: Path, data: Path, kill: Optional[dict[str, Any]], timeout: float,
              lease_ttl: float) -> dict[str, Any]:
    """One sweep from scratch: a process killed once as ``kill`` says (None: not killed), then,
    when it was killed, a second one that must finish the sweep."""
    sweep, planned = write_sweep(root, data)
    store, log, phases = root / "results.sqlite", root / "sweeps.log", root / "phases.log"
    sig = kill["signal"] if kill else 0
    proc = start_sweep(sweep, store, log, phases, lease_ttl,
                       kill["kill_at"] if kill and kill["mode"] == "phase" else "")
    killed_at: Optional[float] = None
    started = time.time()
    if kill and kill["mode"] == "uniform":
        claimed = wait_for_claim(proc, phases, timeout)
        if claimed is not None and wait(proc, claimed + kill["after_s"] - time.time()) is None:
            killed_at = time.time()
            proc.send_signal(sig)
            if wait(proc, 60.0) is None:  # a SIGTERM not obeyed within a minute
                proc.kill()
    code = finish(proc, timeout, log)
    first_s = time.time() - started
    marks = fp.read_log(phases)
    if kill and kill["mode"] == "phase":
        mark = fp.kill_mark(marks, proc.pid)
        killed_at = mark.time if mark else None
    claimed = fp.first_claim(marks, proc.pid)
    ended = [m.time for m in marks if m.pid == proc.pid and m.event == "E"
             and m.name == fp.SWEEP_END]
    result: dict[str, Any] = {"root": str(root), **{k: v for k, v in (kill or {}).items()
                                                      if k != "signal"},
                              "signal": signal.Signals(sig).name if killed_at else None,
                              "killed": killed_at is not None, "first_process_s": first_s,
                              "first_pid": proc.pid,  # its whole work, when it did all
                              "first_work_s": ended[0] - claimed
                              if ended and claimed and killed_at is None else None}
    if killed_at is not None:
        result["phase"] = fp.phase_at(marks, proc.pid, killed_at)
        code = finish(start_sweep(sweep, store, log, phases, lease_ttl), timeout, log)
        if code != 0:
            raise RuntimeError(f"the resumed sweep in {root} ended with code {code}; see {log}")
    elif code != 0:
        raise RuntimeError(f"the sweep in {root} ended with code {code}; see {log}")
    again, redone = fp.trained_again(fp.read_log(phases))
    return {**result, **store_figures(store, planned), "trained_again": again, "redone": redone,
            "leftovers": leftovers(root, store)}


def calibrate(root: Path, data: Path, timeout: float, lease_ttl: float) -> dict[str, Any]:
    """An unkilled sweep: how long a process takes to start (to its first store claim) and to
    work (first claim to its last phase mark: the exit is left out), and each phase's
    occurrences and their lengths."""
    started = time.time()
    figures = run_round(root, data, None, timeout, lease_ttl)
    ended = time.time()
    marks = fp.read_log(root / "phases.log")
    pid = figures["first_pid"]
    claimed = fp.first_claim(marks, pid)
    if claimed is None:
        raise RuntimeError(f"no phase marks in {root / 'phases.log'}: the markers did not load")
    last = max(m.time for m in marks if m.pid == pid)
    return {**figures, "startup_s": claimed - started, "work_s": last - claimed,
            "exit_s": ended - last,
            "occurrences": fp.occurrences(marks, pid)}


def plan_kill(index: int, made: int, calibration: Optional[dict[str, Any]], work_s: float,
              rng: random.Random) -> dict[str, Any]:
    """The kill of round ``index``: even rounds uniform over the work, odd rounds at the next
    named phase; signals go SIGKILL, SIGTERM, SIGTERM, SIGKILL, ... with the kills made so far
    (so each way of choosing the kill gets both)."""
    sig = signal.SIGKILL if made % 4 in (0, 3) else signal.SIGTERM
    if index % 2 == 0:
        return {"mode": "uniform", "after_s": round(rng.uniform(0.0, work_s), 3),
                "window_s": round(work_s, 3), "signal": sig}
    found = (calibration or {}).get("occurrences", {})
    targets = ([t for t in TARGETS if found.get(t.removeprefix("after "))] if found
               else list(TARGETS))
    target = targets[(index // 2) % len(targets)]
    lengths = found.get(target.removeprefix("after "))
    k = rng.randint(1, len(lengths)) if lengths else 1
    length = lengths[k - 1] if lengths and not target.startswith("after ") else 0.0
    delay = round(rng.uniform(0.0, length), 4) if length >= SHORT_S else 0.0
    return {"mode": "phase", "target": target, "occurrence": k, "delay_s": delay,
            "signal": sig, "kill_at": f"{target}|{k}|{delay}|{int(sig)}"}


def store_figures(store: Path, planned: list[str]) -> dict[str, Any]:
    """Runs in the store, lost, store rows whose run folder is not a whole run, integrity."""
    con = sqlite3.connect(store)
    try:
        rows = list(con.execute("SELECT run_id, out_dir FROM runs"))
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()
    ids = {r[0] for r in rows}
    missing = [r[0] for r in rows if not r[1] or not (Path(r[1]) / "metrics.json").is_file()]
    return {"expected": len(planned), "in_store": len(rows), "lost": len(set(planned) - ids),
            "without_run_folder": missing, "integrity_check": integrity}


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


def phase_table(rounds: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Kills per phase landed in: {phase: {"uniform": n, "phase": n}}."""
    table: dict[str, Counter] = {}
    for r in rounds:
        if r["killed"]:
            table.setdefault(r["phase"], Counter())[r["mode"]] += 1
    return {p: {"uniform": c["uniform"], "aimed": c["phase"]}
            for p, c in sorted(table.items(), key=lambda item: -sum(item[1].values()))}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5, help="kills to make (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to work (default: a temporary folder, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds one sweep process may take")
    parser.add_argument("--lease-ttl", type=float, default=1.0,
                        help="CYTOTUNE_LEASE_TTL of the sweeps killed (default 1 s: a renewal "
                             "every 1/3 s, several in one short sweep)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--work-seconds", type=float, default=None,
                        help="how long an unkilled sweep works; skips the calibration sweep "
                             "(aimed kills then come at once, at each phase's first occurrence)")
    args = parser.parse_args(argv)
    if args.kills < 0:
        parser.error("--kills must be >= 0")
    if not args.lease_ttl > 0:
        parser.error("--lease-ttl must be > 0")

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
        calibration: Optional[dict[str, Any]] = None
        calibrations: list[dict[str, Any]] = []
        if args.work_seconds is None:  # the shorter of two: this machine's load varies
            calibrations = [calibrate(work / f"calibration-{i}", data, args.timeout,
                                      args.lease_ttl) for i in (1, 2)]
            calibration = min(calibrations, key=lambda c: c["work_s"])
            work_s, startup_s = calibration["work_s"], calibration["startup_s"]
        else:
            work_s, startup_s = float(args.work_seconds), float("nan")
        rounds: list[dict[str, Any]] = []
        made = 0
        calibrated_work_s = work_s
        works = [c["work_s"] for c in calibrations] or [work_s]
        while made < args.kills:
            # the uniform window follows the machine's load: the shortest of the last three
            # whole sweeps seen (calibrations, first processes that did all the work)
            work_s = min(works[-3:])
            if len(rounds) > 2 * args.kills + 5:
                raise RuntimeError(f"only {made} kills in {len(rounds)} rounds: the sweep "
                                   f"finishes before a kill lands")
            kill = plan_kill(len(rounds), made, calibration, work_s, rng)
            rounds.append(run_round(work / f"round-{len(rounds) + 1:03d}", data, kill,
                                    args.timeout, args.lease_ttl))
            made += rounds[-1]["killed"]
            r = rounds[-1]
            if r["first_work_s"] is not None:
                works.append(r["first_work_s"])
            print(f"round {len(rounds)}: {r['mode']:7} " + (
                f"{r['signal']} in {r['phase']!r}" if r["killed"] else "not killed (the "
                "process finished first)") + f"; lost {r['lost']}, trained again "
                f"{len(r['trained_again'])}", flush=True)
        pair = two_processes(work / "two-processes", data, args.timeout)
        seconds = time.perf_counter() - started
        killed = [r for r in rounds if r["killed"]]
        kills = {s: sum(r["signal"] == s for r in killed) for s in ("SIGKILL", "SIGTERM")}
        phases = phase_table(rounds)
        total = {k: sum(r[k] for r in rounds) for k in ("expected", "in_store", "lost")}
        again = sum(len(r["trained_again"]) for r in rounds)
        redone = sum(len(r["redone"]) for r in rounds)
        no_folder = sum(len(r["without_run_folder"]) for r in rounds)
        checked = calibrations + rounds
        left = [p for r in checked for p in r["leftovers"]] + pair["leftovers"]
        integrity = sorted({r["integrity_check"] for r in checked} | {pair["integrity_check"]})
        figures = {"kills": kills, "rounds": len(rounds), "rounds_not_killed":
                   len(rounds) - len(killed), "runs_per_sweep": calibration["expected"]
                   if calibration else (rounds[0]["expected"] if rounds else None),
                   "startup_s": round(startup_s, 1), "work_s": round(calibrated_work_s, 1),
                   "uniform_windows_s": [r["window_s"] for r in rounds
                                         if r["mode"] == "uniform"],
                   "kills_by_phase": phases,
                   **{f"runs_{k}" if k != "lost" else k: v for k, v in total.items()},
                   "trained_again_after_publishing": again, "runs_redone_after_a_kill": redone,
                   "store_rows_without_run_folder": no_folder,
                   "leftover_partial_files": len(left), "leftovers": left,
                   "integrity_check": integrity, "two_processes": pair,
                   "per_round": [{k: v for k, v in r.items() if k not in ("root", "leftovers")}
                                 for r in rounds],
                   "calibration_occurrences": {k: len(v) for k, v in
                                               (calibration or {}).get("occurrences", {}).items()},
                   "seconds": round(seconds, 1)}
        print(f"fault injection: {len(killed)} kills ({kills['SIGKILL']} SIGKILL, "
              f"{kills['SIGTERM']} SIGTERM) in {len(rounds)} rounds of a "
              f"{figures['runs_per_sweep']}-run sweep (a sweep process: {startup_s:.1f} s "
              f"start-up, {calibrated_work_s:.1f} s work; uniform kills over windows of "
              f"{min(figures['uniform_windows_s'] or [0]):.1f}-"
              f"{max(figures['uniform_windows_s'] or [0]):.1f} s), {seconds:.0f} s in all")
        print(f"{'phase the kill landed in':38} {'uniform':>7} {'aimed':>6}")
        for phase, n in phases.items():
            print(f"{phase:38} {n['uniform']:7d} {n['aimed']:6d}")
        print(f"runs expected:                       {total['expected']}")
        print(f"runs in the store:                   {total['in_store']}")
        print(f"lost runs:                           {total['lost']}")
        print(f"trained again after publishing:      {again}")
        print(f"runs redone after a kill (in flight): {redone}")
        print(f"store rows without their run folder: {no_folder}")
        print(f"leftover partial files:              {len(left)}")
        for path in left[:20]:
            print(f"  {path}")
        print(f"PRAGMA integrity_check:              {', '.join(integrity)}")
        print(f"two processes, one store: {pair['expected']} runs expected, {pair['in_store']} "
              f"in the store, trained {pair['trained_by_each'][0]} + "
              f"{pair['trained_by_each'][1]}, trained twice {pair['trained_twice']}, not trained "
              f"{pair['not_trained']}, read back {pair['read_back']}, integrity "
              f"{pair['integrity_check']}")
        if args.json is not None:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        ok = (total["lost"] == 0 and again == 0 and no_folder == 0 and not left
              and integrity == ["ok"] and pair["trained_twice"] == 0
              and pair["not_trained"] == 0 and pair["lost"] == 0
              and not pair["without_run_folder"])
        return 0 if ok else 1
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.workdir is None:
            print(f"work folder kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
