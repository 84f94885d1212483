"""The shared perturbations (cytotune.data.perturb): HED against skimage, the robustness contract
(severity 0 is the identity, fixed per image id across processes and batches, monotone in
severity) and refusals naming the bad value."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

skimage_color = pytest.importorskip("skimage.color")

from cytotune.data.perturb import (PERTURBATIONS, SEVERITIES, STRENGTHS, color_jitter,  # noqa: E402
                                   gaussian_blur, hed_jitter, hed_to_rgb, perturb, rgb_to_hed,
                                   severity_description, to_float, to_uint8)
from cytotune.data.synthetic import render_image, style_for  # noqa: E402


def _cells(n: int = 6, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Stained-cell-like uint8 images (the generated data set's renderer): smooth, with white
    background, like cytology, so blur and JPEG have something to change."""
    rng = np.random.default_rng(seed)
    images = [render_image(style_for(i / max(1, n - 1)), size, rng) for i in range(n)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _ids(n: int) -> list[str]:
    return [f"NL/img_{i}.jpg" for i in range(n)]


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hed_conversion_matches_skimage(dtype):
    x = torch.rand(5, 3, 17, 23, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[0, :, :3, :3] = 0.0  # black corners: the 1e-6 floor before the log
    x[1, :, :3, :3] = 1.0
    ref = np.stack([skimage_color.rgb2hed(im) for im in _hwc(x)])
    hed = rgb_to_hed(x.to(dtype))
    assert np.abs(_hwc(hed.double()) - ref).max() < 1e-5
    back = np.stack([skimage_color.hed2rgb(h) for h in ref])
    assert np.abs(_hwc(hed_to_rgb(torch.from_numpy(ref).permute(0, 3, 1, 2).to(dtype)).double())
                  - back).max() < 1e-5


def test_hed_jitter_matches_skimage_and_identity_keeps_pixels():
    g = torch.Generator().manual_seed(1)
    # images made from non-negative stains, so skimage's clamp of negative stains changes nothing
    stains = np.random.default_rng(1).uniform(0, 0.2, size=(4, 16, 16, 3))
    rgb = np.stack([skimage_color.hed2rgb(s) for s in stains])
    alpha = 1 + (torch.rand(4, 3, generator=g, dtype=torch.float64) - 0.5) * 0.1
    beta = (torch.rand(4, 3, generator=g, dtype=torch.float64) - 0.5) * 0.1
    ref = np.stack([skimage_color.hed2rgb(skimage_color.rgb2hed(im) * a + b)
                    for im, a, b in zip(rgb, alpha.numpy(), beta.numpy())])
    out = hed_jitter(torch.from_numpy(rgb).permute(0, 3, 1, 2), alpha, beta)
    assert np.abs(_hwc(out) - ref).max() < 1e-5
    images = _cells(3)
    assert torch.equal(to_uint8(hed_jitter(to_float(images), 1.0, 0.0)), images)


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_severity_zero_is_the_identity(kind):
    images = _cells(4)
    out = perturb(images, kind, 0, _ids(4))
    assert out.dtype == torch.uint8 and torch.equal(out, images)
    assert severity_description(kind, 0) == "clean"


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_every_kind_changes_images_more_with_severity(kind):
    images = _cells(6)
    diffs = []
    for severity in SEVERITIES:
        out = perturb(images, kind, severity, _ids(6))
        assert out.shape == images.shape and out.dtype == torch.uint8
        diffs.append((out.float() - images.float()).abs().mean(dim=(1, 2, 3)))
    per_image = torch.stack(diffs)  # (severity, image)
    assert (per_image[1] > 0).all()
    assert (per_image[1:] >= per_image[:-1]).all(), per_image.mean(dim=1)
    assert per_image[-1].mean() > 2 * per_image[1].mean()


def _digest(kind: str) -> str:
    images = _cells(5, seed=3)
    out = perturb(images, kind, 3, _ids(5))
    return hashlib.sha256(out.numpy().tobytes()).hexdigest()


def test_same_pixels_in_another_process():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_perturb as t; "
            "print(' '.join(t._digest(k) for k in t.PERTURBATIONS))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__)],
                          capture_output=True, text=True, env=env, timeout=300, check=True)
    assert done.stdout.split() == [_digest(k) for k in PERTURBATIONS]


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_an_image_gets_the_same_pixels_in_any_batch(kind):
    images, ids = _cells(6), _ids(6)
    whole = perturb(images, kind, 4, ids)
    order = [4, 1, 5, 0, 3, 2]
    shuffled = perturb(images[order], kind, 4, [ids[i] for i in order])
    assert torch.equal(shuffled, whole[order])
    assert torch.equal(perturb(images[2:3], kind, 4, ids[2:3]), whole[2:3])


def test_the_image_id_seeds_the_random_parts():
    images = _cells(1).expand(2, -1, -1, -1).contiguous()
    for kind in ("hed", "noise"):
        a, b = perturb(images, kind, 2, ["x.jpg", "y.jpg"])
        assert not torch.equal(a, b)
    a, b = perturb(images, "blur", 2, ["x.jpg", "y.jpg"])  # no randomness: same pixels
    assert torch.equal(a, b)


def test_descriptions_name_the_strength():
    assert severity_description("blur", 3) == "blur sigma 1.5 px"
    assert severity_description("jpeg", 5) == "JPEG quality 10"
    for kind in PERTURBATIONS:
        assert len(STRENGTHS[kind]) == len(SEVERITIES) - 1
        assert len({severity_description(kind, s) for s in SEVERITIES}) == len(SEVERITIES)


@pytest.mark.parametrize("kind, severity, words", [
    ("defocus", 1, ["'defocus'", "hed, blur, jpeg, noise, scale, brightness"]),
    ("blur", 6, ["6", "0, 1, 2, 3, 4, 5"]),
    ("blur", -1, ["-1", "0, 1, 2, 3, 4, 5"]),
    ("jpeg", 2.0, ["2.0", "0, 1, 2, 3, 4, 5"]),
])
def test_unknown_kind_or_severity_is_refused_naming_the_choices(kind, severity, words):
    images = _cells(1)
    for call in (lambda: perturb(images, kind, severity, ["a"]),
                 lambda: severity_description(kind, severity)):
        with pytest.raises(ValueError) as err:
            call()
        for word in words:
            assert word in str(err.value)


def test_bad_images_or_ids_are_refused():
    images = _cells(2)
    with pytest.raises(ValueError, match="uint8"):
        perturb(images.float(), "blur", 1, _ids(2))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        perturb(images[:, :1], "blur", 1, _ids(2))
    with pytest.raises(ValueError, match="2 images but 3 image ids"):
        perturb(images, "blur", 1, _ids(3))


def test_blur_takes_one_sigma_per_image():
    x = to_float(_cells(2))
    both = gaussian_blur(x, torch.tensor([0.5, 2.0]))
    assert torch.allclose(both[0:1], gaussian_blur(x[0:1], 0.5), atol=1e-6)
    # the kernel is sized for the largest sigma: one wider kernel, the same blur
    assert torch.allclose(both[1:2], gaussian_blur(x[1:2], 2.0), atol=1e-6)


def test_colour_jitter_agrees_with_torchvision_where_defined_alike():
    from torchvision.transforms.v2 import functional as F

    x = to_float(_cells(3))
    assert torch.allclose(color_jitter(x, 1.2, 1.0, 1.0, 0.0), F.adjust_brightness(x, 1.2),
                          atol=1e-5)
    assert torch.allclose(color_jitter(x, 1.0, 0.7, 1.0, 0.0), F.adjust_contrast(x, 0.7),
                          atol=1e-4)
    assert torch.allclose(color_jitter(x, 1.0, 1.0, 1.4, 0.0), F.adjust_saturation(x, 1.4),
                          atol=1e-4)
    # hue: a luma-keeping rotation, not HSV's shift, but turning the same way (red -> yellow)
    red = torch.tensor([0.8, 0.3, 0.2]).view(1, 3, 1, 1)
    ours, theirs = color_jitter(red, 1.0, 1.0, 1.0, 0.05), F.adjust_hue(red, 0.05)
    assert ours[0, 1] > red[0, 1] and theirs[0, 1] > red[0, 1]
    assert (color_jitter(x, 1.0, 1.0, 1.0, 0.0) - x).abs().max() < 1e-6
