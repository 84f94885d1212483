"""scripts/bench_scale.py runs every stage at tiny sizes and prints each one's line and its
50k/1k-style ratio (the figures themselves are measured by the script, not asserted here)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_scale.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scale_bench_prints_every_stage_and_its_ratio(tmp_path, capsys):
    bench = _script()
    out = tmp_path / "scale.json"
    assert bench.main(["--sizes", "40,80", "--work", str(tmp_path / "work"), "--in-process",
                       "--image-size", "32", "--stored-size", "48", "--linear-epochs", "1",
                       "--lora-steps", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for stage in bench.STAGES:
        assert any(line.startswith(f"{stage} ") and " 40 " in line for line in printed.splitlines())
        assert any(line.startswith(f"{stage} ") and " 80 " in line for line in printed.splitlines())
        assert f"ratio {stage} " in printed
    saved = json.loads(out.read_text())
    assert set(saved["results"]) == {"40", "80"}
    assert saved["results"]["80"]["plan"]["items"] == bench.PLAN_RUNS
    assert saved["results"]["80"]["store_write"]["items"] == 16  # N / 5 rows
    assert all(r["peak_rss_bytes"] > 0 for r in saved["results"]["40"].values())
    assert set(saved["ratio_largest_over_smallest"]) == set(bench.STAGES)
