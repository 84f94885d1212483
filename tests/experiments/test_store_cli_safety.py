"""Issue 31, items 5, 7 and 8: `sweep` and `report` answer a learning rate the grid would
ignore, and a store path that is not a store, with one `error:` line naming it; `report` and
`sweep --dry-run` write nothing to any file they are given."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from cytotune.cli import main


def _one_error_line(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def sweep_file(tmp_path, synthetic_data, tiny_model_names) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\ndatasets:\n  d: {{source: {synthetic_data}}}\n"
                    f"backbones: [{tiny_model_names['uni']}]\nmethod: [linear]\nshots: [2]\n"
                    f"seeds: [1]\nlrs: [1.0e-3]\n"
                    f"base: {{model: {{pretrained: false}}, optim: {{steps: 2}}, device: cpu, "
                    f"cache_dir: {tmp_path / 'cache'}}}\n")
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- item 5: a learning rate that lrs would replace, or an absurd one ----------------------------
@pytest.mark.parametrize("value", ["nan", "5", "0.02"])
def test_set_base_lr_beside_lrs_is_refused_naming_both(sweep_file, tmp_path, capsys, value):
    store = tmp_path / "store.sqlite"
    assert main(["sweep", str(sweep_file), "--store", str(store), "--dry-run",
                 "--set", f"base.optim.lr={value}"]) == 2
    line = _one_error_line(capsys, "base.optim.lr", "lrs")
    assert f"base.optim.lr={value}" in line  # printed as given, [..] and all
    assert not store.exists()


@pytest.mark.parametrize("flags,needle", [
    (["--set", "lrs=[5]"], "lrs[0] must be > 0 and <= 1"),
    (["--set", "lrs=[.inf]"], "lrs[0] must be a finite number"),
    (["--set", "lrs=null", "--set", "base.optim.lr=nan"], "base.optim.lr must be a finite"),
    (["--set", "lrs=null", "--set", "base.optim.lr=1e300"], "base.optim.lr must be > 0 and <= 1"),
])
def test_absurd_learning_rates_in_a_sweep_are_one_line(sweep_file, tmp_path, capsys, flags,
                                                       needle):
    assert main(["sweep", str(sweep_file), "--store", str(tmp_path / "x.sqlite"), "--dry-run",
                 *flags]) == 2
    _one_error_line(capsys, needle)


def test_without_lrs_base_lr_sets_the_rate(sweep_file, tmp_path, capsys):
    assert main(["sweep", str(sweep_file), "--store", str(tmp_path / "x.sqlite"), "--dry-run",
                 "--set", "lrs=null", "--set", "base.optim.lr=0.02"]) == 0
    assert "0.02" in capsys.readouterr().out


# ---- items 7 and 8: files that are not a store -------------------------------------------------
def _foreign_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("INSERT INTO notes (text) VALUES ('mine')")
    con.commit()
    con.close()
    return path


def _real_store(path: Path) -> Path:
    from cytotune.experiments import ResultStore
    from experiments_helpers import hand_record

    ResultStore(path).insert_many([hand_record(f"r{i}", seed=i) for i in range(200)])
    return path


@pytest.fixture
def bad_stores(tmp_path) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the error line must say)."""
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database\n")
    folder = tmp_path / "folder.sqlite"
    folder.mkdir()
    good = _real_store(tmp_path / "good.sqlite")
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(good.read_bytes()[:20000])
    return {"text": (text, "not an SQLite database"), "folder": (folder, "is a folder"),
            "truncated": (truncated, "damaged"),
            "foreign": (_foreign_db(tmp_path / "other.sqlite"), "not a cytotune result store")}


@pytest.mark.parametrize("kind", ["text", "folder", "truncated", "foreign"])
def test_report_and_dry_run_on_what_is_not_a_store_are_one_line_and_write_nothing(
        bad_stores, sweep_file, tmp_path, capsys, kind):
    path, says = bad_stores[kind]
    before = _digest(path) if path.is_file() else None
    listing = _listing(tmp_path)
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 2
    _one_error_line(capsys, str(path), says)
    assert main(["sweep", str(sweep_file), "--store", str(path), "--dry-run"]) == 2
    _one_error_line(capsys, str(path), says)
    if before is not None:
        assert _digest(path) == before
    # nothing new anywhere: no report folder, no store, no tables. SQLite itself opens a WAL
    # file (the truncated store) with its -wal/-shm files beside it, even read-only
    assert [n for n in _listing(tmp_path) if not n.endswith(("-wal", "-shm"))] == listing


def test_the_real_sweep_never_adds_its_tables_to_another_programs_database(
        bad_stores, sweep_file, capsys):
    path, _ = bad_stores["foreign"]
    before = _digest(path)
    assert main(["sweep", str(sweep_file), "--store", str(path), "--quiet"]) == 2
    _one_error_line(capsys, str(path), "not a cytotune result store")
    assert _digest(path) == before


def test_report_on_an_empty_file_is_refused_but_a_dry_run_plans_into_it(sweep_file, tmp_path,
                                                                        capsys):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    assert main(["report", str(empty), "--out", str(tmp_path / "report")]) == 2
    _one_error_line(capsys, str(empty), "not a cytotune result store", "empty")
    assert not (tmp_path / "report").exists()
    # the real sweep makes an empty file a store, so its dry run plans every run, writing none
    assert main(["sweep", str(sweep_file), "--store", str(empty), "--dry-run"]) == 0
    assert "1 to run" in capsys.readouterr().out
    assert empty.stat().st_size == 0 and _listing(tmp_path).count("empty.sqlite") == 1
    assert not any(name.startswith("empty.sqlite-") for name in _listing(tmp_path))


def test_dry_run_with_a_missing_store_in_a_missing_folder_creates_nothing(sweep_file, tmp_path,
                                                                          capsys):
    listing = _listing(tmp_path)
    store = tmp_path / "new" / "deeper" / "store.sqlite"
    assert main(["sweep", str(sweep_file), "--store", str(store), "--dry-run"]) == 0
    assert "does not exist yet" in capsys.readouterr().out
    assert _listing(tmp_path) == listing


def test_report_reads_a_real_store_without_changing_it(tmp_path, capsys):
    store = _real_store(tmp_path / "good.sqlite")
    before = _digest(store)
    assert main(["report", str(store), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.html").is_file()
    assert _digest(store) == before


def test_a_sweep_file_with_base_lr_beside_lrs_says_base_lr_is_unused(sweep_file, caplog):
    from cytotune.experiments.sweep import load_sweep

    sweep_file.write_text(sweep_file.read_text().replace("optim: {steps: 2}",
                                                         "optim: {steps: 2, lr: 0.05}"))
    with caplog.at_level("WARNING", logger="cytotune"):
        sweep = load_sweep(str(sweep_file))
    assert [r.lr for r in sweep.runs()] == [1e-3]
    assert any("base.optim.lr=0.05 is not used" in r.getMessage() and "lrs" in r.getMessage()
               for r in caplog.records)
