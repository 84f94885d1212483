"""Training augmentation (optim.augment): the names a config accepts, ``on`` exactly the old
flips and rotations, each stain/acquisition augmentation seeded by the run, and wired into the
image-training path (LoRA) while cached-feature probes say they ignore it."""
from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import cytotune
from cytotune.api import build_config
from cytotune.training.augment import (augment_batch, batch_augmenter, normalise,
                                       note_ignored_augmentation, random_dihedral)
from cytotune.training.config import (AUGMENTATIONS, ConfigError, OptimConfig, TrainConfig,
                                      augment_names)
from cytotune.training.methods.base import image_batch_fetcher

ALL = ",".join(AUGMENTATIONS)


def _pixels(n: int = 8, size: int = 24, seed: int = 0) -> torch.Tensor:
    # smooth colour gradients with a dark blob: something for blur, JPEG and zoom to change
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.rand(n, 3, 1, 1, generator=g) * 0.5 + 0.4
    image = base * (0.7 + 0.3 * xx) * (0.8 + 0.2 * yy)
    blob = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.05).float()
    image = image * (1 - 0.6 * blob * torch.rand(n, 3, 1, 1, generator=g))
    return (image * 255).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("value, names, stored", [
    (True, ("dihedral",), True), (False, (), False), ("on", ("dihedral",), True),
    ("off", (), False), ("dihedral", ("dihedral",), True),
    ("scale, hed,on", ("dihedral", "hed", "scale"), "dihedral,hed,scale"),
    (["blur", "jpeg"], ("blur", "jpeg"), "blur,jpeg"),
])
def test_augment_accepts_old_switch_names_and_lists(value, names, stored):
    assert augment_names(value) == names
    config = TrainConfig.from_dict({"data": {"source": "x"}, "optim": {"augment": value}})
    assert config.optim.augment == stored
    config.validate()
    # the stored form reads back the same (a run's resolved config)
    assert TrainConfig.from_dict(config.to_dict()).optim.augment == stored


def test_the_default_stays_on_and_is_stored_as_before():
    assert OptimConfig().augment is True
    assert TrainConfig().to_dict()["optim"]["augment"] is True


@pytest.mark.parametrize("value, words", [
    ("hed,stain", ["optim.augment", "'stain'", "dihedral, hed, color, blur, jpeg, scale"]),
    ("off,hed", ["optim.augment", "'off' cannot be combined"]),
    ("hed,,blur", ["optim.augment", "empty name"]),
    (3, ["optim.augment"]),
])
def test_bad_augment_values_are_refused_naming_the_option(value, words):
    config = TrainConfig.from_dict({"data": {"source": "x"}}) if value == 3 else None
    with pytest.raises(ConfigError) as err:
        if config is None:
            TrainConfig.from_dict({"data": {"source": "x"},
                                   "optim": {"augment": value}}).validate()
        else:
            TrainConfig.from_dict({"data": {"source": "x"}, "optim": {"augment": value}})
    for word in words:
        assert word in str(err.value)


def test_cli_refuses_a_bad_name_with_one_error_line_and_keeps_no_augment(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cytotune", "train", "--data", str(tmp_path),
                           "--augment", "hed,defocus", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "'defocus'" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
    from cytotune.cli import build_parser
    args = build_parser().parse_args(["train", "--data", "x", "--no-augment"])
    assert build_config(None, **{"data": "x", "augment": args.augment}).optim.augment is False


def test_on_is_exactly_the_old_flips_and_rotations():
    pixels = _pixels(16)
    for value in (True, "on", "dihedral"):
        new, old = batch_augmenter(value, 7), torch.Generator().manual_seed(7)
        for _ in range(3):  # consecutive batches draw from one generator, as before
            assert torch.equal(new(pixels), random_dihedral(pixels, old))
    assert torch.equal(batch_augmenter("off", 7)(pixels), pixels)


def test_the_fetcher_with_augment_on_gives_the_old_batches():
    pixels, labels = _pixels(12), torch.arange(12) % 3
    pre = SimpleNamespace(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    ctx = SimpleNamespace(backbone=SimpleNamespace(preprocessing=pre),
                          train=SimpleNamespace(pixels=pixels, labels=labels),
                          device=torch.device("cpu"), config=SimpleNamespace(seed=4))
    fetch = image_batch_fetcher(ctx, True)
    old = torch.Generator().manual_seed(5)  # the run's augmentation generator: seed + 1
    for idx in (torch.tensor([0, 3, 5, 7]), torch.tensor([11, 2, 1, 4])):
        x, y = fetch(idx)
        assert torch.equal(x, normalise(random_dihedral(pixels[idx], old), pre.mean, pre.std))
        assert torch.equal(y, labels[idx])


@pytest.mark.parametrize("name", [a for a in AUGMENTATIONS if a != "dihedral"] + [ALL])
def test_each_augmentation_is_seeded_and_changes_the_images(name):
    pixels = _pixels(8)
    names = augment_names(name)
    runs = [[augment_batch(pixels, names, g) for _ in range(2)]
            for g in (torch.Generator().manual_seed(3), torch.Generator().manual_seed(3),
                      torch.Generator().manual_seed(4))]
    first, again, other = runs
    for a, b in zip(first, again):
        assert torch.equal(a, b)  # same seed: the same views
        assert a.dtype == torch.uint8 and a.shape == pixels.shape
    assert not torch.equal(first[0], other[0])  # another seed: other views
    assert not torch.equal(first[0], first[1])  # a fresh view every batch
    per_image = (first[0].float() - pixels.float()).abs().mean(dim=(1, 2, 3))
    # strengths are random (blur's sigma 0.1 changes nothing) and blur and JPEG touch about half
    assert (per_image > 0).sum() >= (2 if name in ("blur", "jpeg") else 6)


def test_augment_batch_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown augmentation.*stain"):
        augment_batch(_pixels(2), ("hed", "stain"), torch.Generator())


def test_cached_feature_probes_say_once_that_they_ignore_it(caplog):
    with caplog.at_level(logging.INFO, logger="cytotune"):
        note_ignored_augmentation("linear", "hed,blur")
        note_ignored_augmentation("linear", True)  # the default: silent, as before
        note_ignored_augmentation("lora", "hed,blur")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "hed,blur" in lines[0] and "linear" in lines[0]


FAST = dict(steps=3, val_every=3, batch_size=8, pretrained=False, num_workers=0, shots=2,
            seed=1, lr=1e-2, method="lora", model="vit-b16-tiny")


def test_lora_trains_on_the_augmented_views_deterministically(synthetic_data, tmp_path):
    def adapter(name: str, augment) -> dict[str, torch.Tensor]:
        out = tmp_path / name
        cytotune.train(data=str(synthetic_data), out=str(out), cache_dir=str(tmp_path / "c"),
                       augment=augment, **FAST)
        return load_file(str(out / "adapter.safetensors"))

    plain, stained, again = adapter("on", "on"), adapter("all", ALL), adapter("all2", ALL)
    assert set(plain) == set(stained)
    assert all(torch.equal(stained[k], again[k]) for k in stained)  # per seed: the same run
    assert any(not torch.equal(plain[k], stained[k]) for k in plain)  # the views reached it
