"""Tiny trained runs shared by the inference tests (trained once per session, on demand)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import cytotune
from inference_helpers import readme_code

FAST = dict(steps=4, val_every=2, batch_size=8, linear_epochs=3, pretrained=False, num_workers=0,
            cache_dir=None)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synthetic_data):
    """``trained_run(card, method="lora", seed=1)`` -> the run directory of a tiny run of the built-in
    ``card`` (its '-tiny' variant, which the model registry resolves by name)."""
    root = tmp_path_factory.mktemp("runs")
    done: dict[tuple, Path] = {}

    def get(card: str, method: str = "lora", seed: int = 1) -> Path:
        key = (card, method, seed)
        if key not in done:
            out = root / f"{card}-{method}-{seed}"
            # lr 2e-2: a few steps move the LoRA B matrices well away from zero, so the merge matters
            cytotune.train(data=str(synthetic_data), model=f"{card}-tiny", method=method, shots=2,
                           seed=seed, lr=2e-2, out=str(out), **FAST)
            done[key] = out
        return done[key]

    return get


@pytest.fixture
def run_readme(monkeypatch):
    """Execute an export's README code in its folder with cytotune made unimportable; returns the
    namespace (model, predict, preprocess, ...)."""

    def run(export_dir: Path) -> dict:
        code = readme_code(export_dir / "README.md")
        assert "cytotune" not in code
        namespace: dict = {"__name__": "readme"}
        with monkeypatch.context() as patch:
            patch.chdir(export_dir)
            patch.setitem(sys.modules, "cytotune", None)  # `import cytotune` fails in here
            exec(compile(code, str(export_dir / "README.md"), "exec"), namespace)
        return namespace

    return run
