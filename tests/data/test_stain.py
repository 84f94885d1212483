"""Stain normalisation at decode time (cytotune.data.stain): torchstain's own output, targets
refused in one line, unnormalisable images kept and counted, and cache keys that follow the
method and the target."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

from cytotune.data import ImageStore, decode_images, decode_resized
from cytotune.data.stain import (MIN_STAINED_PIXELS, StainError, StainNormaliser, fit_target,
                                 stain_normaliser, stained_pixels)

# Ruifrok & Johnston's haematoxylin and eosin optical-density vectors
H_VECTOR = np.array([0.65, 0.70, 0.29])
E_VECTOR = np.array([0.07, 0.99, 0.11])


def he_image(seed: int, size: int = 64, h_scale: float = 1.0, e_scale: float = 1.0) -> np.ndarray:
    """A fixed H&E-like uint8 (size, size, 3) image: cells of eosin with haematoxylin nuclei on
    a bright background, built in optical density from the two stain vectors."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    h, e = np.zeros((size, size)), np.zeros((size, size))
    for _ in range(6):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(size / 16, size / 6)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        e += 0.8 * np.exp(-d2 / (8 * r * r))
        h += 1.2 * np.exp(-d2 / (2 * r * r))
    h = h * h_scale + rng.uniform(0, 0.05, h.shape)
    e = e * e_scale + rng.uniform(0, 0.05, e.shape)
    od = h[..., None] * H_VECTOR + e[..., None] * E_VECTOR
    return np.clip(np.rint(255 * np.exp(-od)), 0, 255).astype(np.uint8)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def target(tmp_path) -> Path:
    return save(tmp_path / "target.png", he_image(100, size=96, h_scale=1.4, e_scale=0.6))


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalisation_equals_torchstains_own_output(target, method):
    image = he_image(1, h_scale=0.7, e_scale=1.3)
    reference = NumpyMacenkoNormalizer() if method == "macenko" else NumpyReinhardNormalizer()
    reference.fit(np.asarray(Image.open(target).convert("RGB")))
    expected = (reference.normalize(image, stains=False)[0] if method == "macenko"
                else reference.normalize(image))
    normaliser = fit_target(method, target)
    out = normaliser(image)
    assert out is not None and out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, image)  # it did change the stain
    # rebuilt from the stored parameters alone (a run's stain.json), the same pixels
    rebuilt = StainNormaliser.from_json(normaliser.to_json(), "stain.json")
    np.testing.assert_array_equal(rebuilt(image), expected)
    assert rebuilt.fingerprint == normaliser.fingerprint


def test_macenko_maps_stain_strength_towards_the_target(target):
    """Two stainings of the same tissue, light and heavy, come out closer than they went in."""
    light, heavy = he_image(3, h_scale=0.7, e_scale=0.7), he_image(3, h_scale=1.3, e_scale=1.3)
    normaliser = fit_target("macenko", target)
    before = np.abs(light.astype(float) - heavy).mean()
    after = np.abs(normaliser(light).astype(float) - normaliser(heavy)).mean()
    assert after < 0.5 * before  # measured: 35.2 -> 13.7 mean absolute difference


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_a_target_without_stain_is_refused_in_one_line_naming_it(tmp_path, method):
    blank = save(tmp_path / "blank slide.png", np.full((40, 40, 3), 250, np.uint8))
    with pytest.raises(StainError) as err:
        stain_normaliser(method, blank)
    message = str(err.value)
    assert "\n" not in message and str(blank) in message and "no stain found" in message


def test_unreadable_and_missing_targets_are_refused_naming_them(tmp_path):
    broken = tmp_path / "target.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(StainError, match=f"--stain-target {broken}: .*not a recognised image"):
        fit_target("macenko", broken)
    missing = tmp_path / "nowhere.png"
    with pytest.raises(StainError, match=f"--stain-target {missing}: cannot read it"):
        stain_normaliser("macenko", missing)
    with pytest.raises(StainError, match="needs --stain-target"):
        stain_normaliser("macenko", None)
    with pytest.raises(StainError, match="unknown stain normalisation 'vahadane'"):
        stain_normaliser("vahadane", broken)
    assert stain_normaliser("none", None) is None


def test_an_image_with_almost_no_stain_is_kept_as_it_is(target):
    normaliser = fit_target("macenko", target)
    faint = np.full((32, 32, 3), 245, np.uint8)
    faint[:3, :3] = (90, 40, 120)  # 9 stained pixels: torchstain would compute noise or fail
    assert stained_pixels(faint) < MIN_STAINED_PIXELS
    assert normaliser(faint) is None
    constant = np.full((32, 32, 3), 120, np.uint8)  # Reinhard divides by a zero std
    assert fit_target("reinhard", target)(constant) is None


def test_decoding_applies_it_after_resize_and_lists_the_images_it_could_not(tmp_path, target):
    stained = save(tmp_path / "a.png", he_image(5, size=80))
    blank = save(tmp_path / "b.png", np.full((80, 80, 3), 250, np.uint8))
    normaliser = fit_target("macenko", target)
    decoded = decode_images([stained, blank], 48, 40, "bilinear", transform=normaliser)
    plain = decode_resized(stained, 48, 40, "bilinear")
    np.testing.assert_array_equal(decoded.pixels[0].permute(1, 2, 0).numpy(), normaliser(plain))
    np.testing.assert_array_equal(decoded.pixels[1].permute(1, 2, 0).numpy(),
                                  decode_resized(blank, 48, 40, "bilinear"))
    assert decoded.unnormalised == [blank]


def test_cache_keys_change_with_the_method_and_the_target(tmp_path, target):
    images = [save(tmp_path / "img" / f"{i}.png", he_image(i)) for i in range(3)]
    other_target = save(tmp_path / "other.png", he_image(200, size=96, h_scale=0.8))
    stores = {"plain": ImageStore(tmp_path / "cache"),
              "macenko": ImageStore(tmp_path / "cache", transform=fit_target("macenko", target)),
              "macenko-other": ImageStore(tmp_path / "cache",
                                          transform=fit_target("macenko", other_target)),
              "reinhard": ImageStore(tmp_path / "cache",
                                     transform=fit_target("reinhard", target))}
    keys = {name: store.cache_key(images, 32, 32, "bilinear") for name, store in stores.items()}
    assert len(set(keys.values())) == 4
    decoded = {name: store.get(images, 32, 32, "bilinear") for name, store in stores.items()}
    for name, result in decoded.items():
        assert result.key == keys[name]
    # the per-image keys (what the feature cache is keyed on) differ too
    per_image = [tuple(result.image_keys) for result in decoded.values()]
    assert len({k for keys_ in per_image for k in keys_}) == 4 * len(images)
    # each store serves its own pixels, never another method's or target's from the cache
    for name, store in stores.items():
        again = store.get(images, 32, 32, "bilinear")
        assert store.hits == 1
        np.testing.assert_array_equal(again.pixels.numpy(), decoded[name].pixels.numpy())
    assert not np.array_equal(decoded["macenko"].pixels.numpy(),
                              decoded["macenko-other"].pixels.numpy())
    # a target file changed in place is a new fingerprint, hence a new key
    save(target, he_image(101, size=96, h_scale=1.4, e_scale=0.6))
    changed = ImageStore(tmp_path / "cache", transform=fit_target("macenko", target))
    assert changed.cache_key(images, 32, 32, "bilinear") not in keys.values()


def test_a_cache_hit_still_reports_the_unnormalised_images(tmp_path, target):
    images = [save(tmp_path / "a.png", he_image(7)),
              save(tmp_path / "b.png", np.full((64, 64, 3), 252, np.uint8))]
    normaliser = fit_target("macenko", target)
    first = ImageStore(tmp_path / "cache", transform=normaliser).get(images, 32, 32, "bilinear")
    second_store = ImageStore(tmp_path / "cache", transform=normaliser)
    second = second_store.get(images, 32, 32, "bilinear")
    assert second_store.hits == 1
    assert first.unnormalised == second.unnormalised == [images[1]]


def test_stored_parameters_that_do_not_fit_are_refused(target):
    stored = fit_target("macenko", target).to_json()
    stored["params"]["maxCRef"] = [1.0, float("nan")]
    with pytest.raises(StainError, match="stain.json: .*"):
        StainNormaliser.from_json(stored, "stain.json")
    with pytest.raises(StainError, match="stain.json: not usable"):
        StainNormaliser.from_json({"method": "macenko"}, "stain.json")
