"""The real-data tests find MLCC where `cytotune bench` does: $CYTOTUNE_MLCC, else
shared/data/mlcc beside the repository, through one helper (tests/conftest.py)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _conftest():
    spec = importlib.util.spec_from_file_location("cytotune_tests_root_conftest",
                                                  TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_environment_variable_is_honoured(tmp_path, monkeypatch):
    (tmp_path / "mlcc").mkdir()
    monkeypatch.setenv("CYTOTUNE_MLCC", str(tmp_path / "mlcc"))
    root, _ = _conftest().real_data_root()
    assert root == tmp_path / "mlcc"


def test_the_skip_reason_names_both_places(tmp_path, monkeypatch):
    conftest = _conftest()
    monkeypatch.setenv("CYTOTUNE_MLCC", str(tmp_path / "nowhere"))
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "shared" / "data")
    root, reason = conftest.real_data_root()
    assert root is None
    assert "CYTOTUNE_MLCC" in reason and str(tmp_path / "nowhere") in reason
    assert str(tmp_path / "shared" / "data" / "mlcc") in reason
    monkeypatch.delenv("CYTOTUNE_MLCC")
    assert "CYTOTUNE_MLCC (not set)" in conftest.real_data_root()[1]


def test_no_test_hard_codes_the_mlcc_path():
    """Only conftest.py knows where the real data lies; tests take the mlcc_root fixture."""
    pattern = re.compile(r"""shared[/"', ]+data|shared/data/mlcc|\.\./shared""")
    offenders = [str(p.relative_to(TESTS)) for p in TESTS.rglob("*.py")
                 if p.name != "conftest.py" and p != Path(__file__).resolve()
                 and pattern.search(p.read_text())]
    assert offenders == []
