import pytest

from cytotune.training.rundir import RunExistsError, RunWriter


def test_nothing_appears_until_commit_and_abort_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    w = RunWriter(out)
    w.write_json("metrics.json", {"a": 1})
    assert not out.exists()
    w.abort()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_finished_run_is_not_overwritten_unless_asked(tmp_path):
    out = tmp_path / "run"
    w = RunWriter(out)
    w.write_json("metrics.json", {"a": 1})
    w.commit()
    with pytest.raises(RunExistsError, match="--overwrite"):
        RunWriter(out)
    w2 = RunWriter(out, overwrite=True)
    w2.write_json("metrics.json", {"a": 2})
    # the old run is intact until the new one is committed
    assert (out / "metrics.json").read_text().count("1") == 1
    w2.commit()
    assert '"a": 2' in (out / "metrics.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_nan_becomes_null(tmp_path):
    w = RunWriter(tmp_path / "r")
    w.write_json("metrics.json", {"auroc": float("nan")})
    assert "null" in w.path("metrics.json").read_text()
    w.abort()
