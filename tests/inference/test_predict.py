"""`cytotune predict`: an image, a folder or a CSV in; one CSV row per image out, bad files kept."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytotune.inference import collect_inputs, load, predict
from cytotune.inference.cli import register

from inference_helpers import prob_columns


def _parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="cytotune")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = register(sub)
    return parser, commands


def cli(*argv: str) -> int:
    parser, commands = _parser()
    args = parser.parse_args(list(argv))
    return commands[args.command](args)


@pytest.fixture
def new_images(synthetic_data, tmp_path) -> Path:
    """A folder of new images in nested folders, one corrupt PNG and one non-image file."""
    folder = tmp_path / "new"
    for i, src in enumerate(sorted(synthetic_data.rglob("*.png"))[::6]):
        dest = folder / f"slide{i % 2}" / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    (folder / "slide0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predictions_on_the_runs_test_images_equal_its_predictions_csv(trained_run, tmp_path):
    run = trained_run("clip-vit-b16")
    reference = pd.read_csv(run / "predictions.csv")
    out = tmp_path / "again.csv"
    frame = predict(run, run / "predictions.csv", out=out, device="cpu", batch_size=5)
    assert list(frame["path"]) == list(reference["path"])
    assert list(frame["label"]) == list(reference["label"])  # carried over from the CSV
    assert (frame["status"] == "ok").all()
    assert prob_columns(frame) == prob_columns(reference)
    np.testing.assert_allclose(frame[prob_columns(frame)].to_numpy(),
                               reference[prob_columns(reference)].to_numpy(), rtol=0, atol=1e-5)
    assert list(frame["predicted"]) == list(reference["predicted"])
    written = pd.read_csv(out)
    assert list(written.columns) == ["path", "label", "predicted", *prob_columns(reference), "status"]
    assert [p.name for p in tmp_path.iterdir()] == ["again.csv"]  # no temporary file left


def test_folder_with_a_corrupt_file_is_reported_not_fatal(trained_run, new_images, tmp_path, capsys):
    run = trained_run("clip-vit-b16")
    out = tmp_path / "preds.csv"
    assert cli("predict", str(run), str(new_images), "--out", str(out), "--device", "cpu",
               "--batch-size", "3") == 0  # with the progress bar
    printed = capsys.readouterr().out
    assert "predicting" in printed
    assert "1 unreadable image(s) skipped" in printed and "broken.png" in printed
    frame = pd.read_csv(out, keep_default_na=False)
    images = sorted(p for p in new_images.rglob("*.png"))
    assert sorted(frame["path"]) == sorted(map(str, images))  # recursive; notes.txt not listed
    broken = frame[frame["path"].str.endswith("broken.png")].iloc[0]
    assert broken["status"].startswith("unreadable: ")
    assert broken["predicted"] == "" and all(broken[c] == "" for c in prob_columns(frame))
    good = frame[frame["status"] == "ok"]
    probs = good[prob_columns(good)].astype(float).to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # the same images one by one, through the Python API, give the same numbers
    model = load(run)
    again = model.predict(list(good["path"])).probs.numpy()
    np.testing.assert_allclose(again, probs, atol=1e-6)


def test_single_image_and_csv_with_relative_paths(trained_run, new_images, tmp_path):
    run = trained_run("uni")
    image = next(p for p in sorted(new_images.rglob("*.png")) if p.name != "broken.png")
    single = predict(run, image, device="cpu")
    assert list(single["path"]) == [str(image)] and single["status"][0] == "ok"

    listing = new_images / "list.csv"
    rows = ["slide0/broken.png", str(image.relative_to(new_images)), "missing.png", str(image)]
    pd.DataFrame({"path": rows, "label": ["a", "b", "c", "d"]}).to_csv(listing, index=False)
    frame = predict(run, listing, out=tmp_path / "p.csv", device="cpu")
    assert list(frame["path"]) == [str(new_images / r) for r in rows[:3]] + [str(image)]
    assert list(frame["label"]) == ["a", "b", "c", "d"]
    status = list(frame["status"])
    assert status[0].startswith("unreadable: ") and status[2].startswith("unreadable: ")
    assert "No such file" in status[2] or "not exist" in status[2]
    assert status[1] == status[3] == "ok"
    cols = prob_columns(frame)
    np.testing.assert_allclose(frame.loc[1, cols].to_numpy(float), single.loc[0, cols].to_numpy(float),
                               atol=1e-6)
    assert frame.loc[[0, 2], cols].isna().all().all()


def test_bad_inputs_are_clear_errors(trained_run, tmp_path, capsys):
    run = trained_run("uni")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        collect_inputs(tmp_path / "nowhere")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("file,label\na.png,x\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        collect_inputs(bad_csv)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        collect_inputs(tmp_path / "empty")
    # the CLI answers with a message and exit code 2, and never writes into the run directory
    assert cli("predict", str(run), str(bad_csv), "--out", str(tmp_path / "x.csv"),
               "--no-progress") == 2
    assert "no 'path' column" in capsys.readouterr().out
    before = (run / "predictions.csv").read_bytes()
    assert cli("predict", str(run), str(run / "predictions.csv"), "--out",
               str(run / "predictions.csv"), "--no-progress") == 2
    assert "inside the run directory" in capsys.readouterr().out
    assert (run / "predictions.csv").read_bytes() == before
    assert cli("predict", str(tmp_path / "norun"), str(bad_csv), "--no-progress") == 2
    assert "does not exist" in capsys.readouterr().out


def test_broken_links_and_link_loops_in_the_input_are_listed_and_reported(trained_run, new_images,
                                                                          tmp_path, capsys):
    """They used to vanish from the folder listing; now each is a row with its reason, counted
    with the unreadable images on screen."""
    (new_images / "slide1" / "gone.png").symlink_to(new_images / "slide1" / "deleted.png")
    (new_images / "slide1" / "loop.png").symlink_to(new_images / "slide1" / "loop.png")
    listed = {p.name for p in collect_inputs(new_images).paths}
    assert {"gone.png", "loop.png"} <= listed
    with pytest.raises(ValueError, match="gone.png is a broken symbolic link"):
        collect_inputs(new_images / "slide1" / "gone.png")

    run = trained_run("uni")
    out = tmp_path / "preds.csv"
    assert cli("predict", str(run), str(new_images), "--out", str(out), "--device", "cpu",
               "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "3 unreadable image(s) skipped" in printed  # broken.png, gone.png, loop.png
    assert "gone.png" in printed and "loop.png" in printed
    frame = pd.read_csv(out, keep_default_na=False).set_index("path")
    gone = frame.loc[str(new_images / "slide1" / "gone.png")]
    loop = frame.loc[str(new_images / "slide1" / "loop.png")]
    assert gone["status"].startswith("unreadable: broken symbolic link")
    assert loop["status"].startswith("unreadable: symbolic link loop")
    assert gone["predicted"] == loop["predicted"] == ""


def test_each_unreadable_file_is_named_once(trained_run, new_images, tmp_path):
    """The summary lists every bad file; the decoder's log warning used to name it a second time
    (the whole command, in a process of its own, so the log goes where a user sees it)."""
    import os
    import subprocess
    import sys

    (new_images / "slide1" / "empty.png").write_bytes(b"")
    run = trained_run("uni")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "cytotune.cli", "predict", str(run),
                           str(new_images), "--out", str(tmp_path / "p.csv"), "--device", "cpu",
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "2 unreadable image(s) skipped" in output
    for name in ("broken.png", "empty.png"):
        assert output.count(name) == 1, output
