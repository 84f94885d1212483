"""Adapter files: safetensors roundtrip and the checks that stop a wrong adapter loading."""
import copy
import json

import pytest
import torch

from cytotune.adapters import (
    LoRAConfig,
    apply_lora,
    load_adapter,
    lora_state_dict,
    merge_lora,
    read_adapter_metadata,
    save_adapter,
)


@pytest.fixture
def trained(tiny_vit, vit_targets, perturb, tmp_path):
    """A tiny ViT with random (\"trained\") q/v adapters saved to disk, and its untouched twin."""
    model = tiny_vit()
    pristine = copy.deepcopy(model)
    apply_lora(model, LoRAConfig(rank=2, alpha=1.0, targets=("q", "v")), vit_targets)
    perturb(model)
    path = tmp_path / "adapter.safetensors"
    save_adapter(path, model, {"card": "tiny_vit", "epochs": 3})
    return model, pristine, path


def _fresh(pristine, vit_targets, **cfg):
    model = copy.deepcopy(pristine)
    apply_lora(model, LoRAConfig(**{"rank": 2, "targets": ("q", "v"), **cfg}), vit_targets)
    return model


def test_state_dict_holds_only_lora_tensors(trained):
    model, _, _ = trained
    sd = lora_state_dict(model)
    assert sorted(sd) == sorted(f"blocks.{i}.attn.qkv.lora_{ab}.{t}"
                                for i in (0, 1) for ab in "AB" for t in "qv")
    assert sd["blocks.0.attn.qkv.lora_B.v"].shape == (64, 2)
    full = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(full[k], v)


def test_file_is_safetensors_with_metadata(trained):
    _, _, path = trained
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])  # a safetensors header, not a pickle
    meta = header["__metadata__"]
    assert meta == read_adapter_metadata(path)
    assert meta["rank"] == "2" and meta["alpha"] == "1.0" and json.loads(meta["targets"]) == ["q", "v"]
    assert meta["card"] == "tiny_vit" and meta["epochs"] == "3"
    assert LoRAConfig.from_metadata(meta) == LoRAConfig(rank=2, alpha=1.0, targets=("q", "v"))


def test_roundtrip_restores_outputs(trained, vit_targets):
    model, pristine, path = trained
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    fresh = _fresh(pristine, vit_targets)
    assert not torch.allclose(fresh(x), expected)
    meta = load_adapter(path, fresh, expect={"card": "tiny_vit"})
    assert meta["card"] == "tiny_vit"
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_load_into_merged_model(trained, vit_targets):
    model, pristine, path = trained
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    fresh = _fresh(pristine, vit_targets)
    merge_lora(fresh)
    load_adapter(path, fresh)
    assert all(m.merged for m in (fresh.blocks[0].attn.qkv, fresh.blocks[1].attn.qkv))
    torch.testing.assert_close(fresh(x), expected, rtol=1e-5, atol=1e-5)


def test_wrong_card_is_refused_naming_both(trained, vit_targets):
    _, pristine, path = trained
    fresh = _fresh(pristine, vit_targets)
    before = {k: v.clone() for k, v in lora_state_dict(fresh).items()}
    with pytest.raises(ValueError, match=r"card: expected 'uni2', found 'tiny_vit'"):
        load_adapter(path, fresh, expect={"card": "uni2"})
    with pytest.raises(ValueError, match=r"dataset: expected 'herlev', found nothing"):
        load_adapter(path, fresh, expect={"dataset": "herlev"})
    for k, v in lora_state_dict(fresh).items():
        assert torch.equal(v, before[k])  # nothing was loaded


def test_wrong_rank_is_refused(trained, vit_targets):
    _, pristine, path = trained
    with pytest.raises(ValueError, match=r"rank: model has 4, file has 2.*shape mismatch"):
        load_adapter(path, _fresh(pristine, vit_targets, rank=4))


def test_wrong_alpha_is_refused(trained, vit_targets):
    _, pristine, path = trained
    with pytest.raises(ValueError, match=r"alpha: model has 8.0, file has 1.0"):
        load_adapter(path, _fresh(pristine, vit_targets, alpha=8.0))


def test_wrong_targets_name_missing_and_unexpected_keys(trained, vit_targets):
    _, pristine, path = trained
    with pytest.raises(ValueError) as err:
        load_adapter(path, _fresh(pristine, vit_targets, targets=("q", "o")))
    msg = str(err.value)
    assert "targets: model has ['q', 'o'], file has ['q', 'v']" in msg
    assert "missing keys (in model, not in file): blocks.0.attn.proj.lora_A.o" in msg
    assert "unexpected keys (in file, not in model): blocks.0.attn.qkv.lora_A.v" in msg


def test_model_without_lora_layers_is_refused(trained):
    _, pristine, path = trained
    with pytest.raises(ValueError, match="apply_lora"):
        load_adapter(path, copy.deepcopy(pristine))


def test_foreign_files_are_refused(tmp_path, trained):
    from safetensors.torch import save_file

    _, _, path = trained
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"card": "x"})
    model, _, _ = trained
    with pytest.raises(ValueError, match="not a cytotune LoRA adapter"):
        load_adapter(foreign, model)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        read_adapter_metadata(junk)


def test_save_refuses_contradicting_metadata_and_empty_models(trained, tiny_vit, tmp_path):
    model, _, _ = trained
    with pytest.raises(ValueError, match="'rank'='8' contradicts"):
        save_adapter(tmp_path / "a.safetensors", model, {"rank": "8"})
    save_adapter(tmp_path / "b.safetensors", model, {"rank": "2"})  # agreeing is fine
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(tmp_path / "c.safetensors", tiny_vit(), {})
