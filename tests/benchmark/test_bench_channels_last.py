"""scripts/bench_channels_last.py runs its three cases both ways on a tiny CNN and prints a
speed-up per case (the figures are measured by the script, not asserted here)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_channels_last.py"


def test_channels_last_bench_prints_each_case_and_the_feature_difference(capsys):
    spec = importlib.util.spec_from_file_location("bench_channels_last", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--card", "efficientnet-lite0-tiny", "--batch", "2", "--rounds", "1",
                       "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "channels_last by default: True" in printed
    difference = float(re.search(r"largest \|NHWC - NCHW\| = (\S+)", printed).group(1))
    assert difference < 1e-4
    for case in ("forward", "lora_fp32", "lora_bf16"):
        assert re.search(rf"^{case} .* (\d+\.\d+)x$", printed, flags=re.MULTILINE), case
