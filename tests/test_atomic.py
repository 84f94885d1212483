"""Whole-file writes of result tables: the new file or the old one, never a partial one."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from cytotune._atomic import write_csv_atomic, write_text_atomic


def test_csv_is_written_whole_into_a_new_folder(tmp_path):
    out = tmp_path / "new" / "table.csv"
    frame = pd.DataFrame({"image": ["a.png", "b.png"], "p": [0.25, 0.75]})
    assert write_csv_atomic(frame, out) == out
    pd.testing.assert_frame_equal(pd.read_csv(out), frame)
    assert [p.name for p in out.parent.iterdir()] == ["table.csv"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "result.json"
    out.write_text('{"old": true}', encoding="utf-8")

    def half_then_fail(file):
        file.write('{"new": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_text_atomic(out, half_then_fail)
    assert json.loads(out.read_text(encoding="utf-8")) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_reader_never_sees_the_file_half_written(tmp_path):
    out = tmp_path / "result.json"
    out.write_text("old", encoding="utf-8")
    seen = []

    def write(file):
        file.write("new")
        seen.append(out.read_text(encoding="utf-8"))  # mid-write: still the old file

    write_text_atomic(out, write)
    assert seen == ["old"]
    assert out.read_text(encoding="utf-8") == "new"
