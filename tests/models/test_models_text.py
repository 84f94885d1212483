"""Text towers of vision-language cards: same outputs as open_clip's own CLIP, real tokenizers,
weights from the same checkpoint, clear errors for image-only cards and missing tokenizers."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from cytotune.models import CheckpointError, FusedSelfAttention, WeightsUnavailableError, tiny_card
from cytotune.models.families import get_family
from cytotune.models.catalog import get_card
from cytotune.models.text import NoTextTowerError, build_text_encoder, text_cards

PROMPTS = ["a cytology image of a malignant cell.", "a Pap smear image of a benign cell.", "x"]
OPEN_CLIP_CARDS = [("clip-vit-b16", "ViT-B-16"), ("clip-vit-l14", "ViT-L-14"),
                   ("quilt", "ViT-B-32"), ("quilt-b16", "ViT-B-16")]


def _save(state_dict, path):
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))


def _tiny_clip(card):
    """A whole open_clip CLIP built by open_clip itself from the tiny card's configs."""
    from open_clip.model import CLIP

    kw = card.model_kwargs
    torch.manual_seed(0)
    clip = CLIP(embed_dim=kw["embed_dim"], vision_cfg=kw["vision_cfg"], text_cfg=kw["text_cfg"],
                quick_gelu=kw["quick_gelu"]).eval()
    with torch.no_grad():
        clip.logit_scale.fill_(2.5)
    return clip


@pytest.mark.parametrize("name,arch", OPEN_CLIP_CARDS)
def test_text_config_is_read_from_the_installed_open_clip(name, arch):
    import open_clip

    card = get_card(name)
    assert card.text_tower and "text_cfg" not in card.model_kwargs  # nothing copied by hand
    family = get_family(card.family)
    assert family.text_config(card)["text_cfg"] == open_clip.get_model_config(arch)["text_cfg"]
    tiny = family.text_config(tiny_card(name))["text_cfg"]
    lib = open_clip.get_model_config(arch)["text_cfg"]
    assert (tiny["context_length"], tiny["vocab_size"]) == (lib["context_length"], lib["vocab_size"])
    assert (tiny["width"], tiny["layers"]) == (32, 2)


@pytest.mark.parametrize("name,arch", OPEN_CLIP_CARDS)
def test_open_clip_text_tower_matches_clip_encode_text(tmp_path, name, arch):
    import open_clip

    card = tiny_card(name)
    clip = _tiny_clip(card)
    _save(clip.state_dict(), tmp_path / "clip.safetensors")
    text = build_text_encoder(card, weights=tmp_path / "clip.safetensors")
    # open_clip's own BPE tokenizer (shipped in the package), same ids as get_tokenizer(arch)
    assert torch.equal(text.tokenize(PROMPTS), open_clip.get_tokenizer(arch)(PROMPTS))
    with torch.no_grad():
        expected = clip.encode_text(open_clip.get_tokenizer(arch)(PROMPTS), normalize=True)
        got = text.encode(PROMPTS)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.norm(dim=-1).sub(1).abs().max() < 1e-5
    assert float(text.logit_scale) == pytest.approx(float(torch.tensor(2.5).exp()))
    attns = [m for n, m in text.model.named_modules() if n.endswith(".attn")]
    assert attns and all(isinstance(m, FusedSelfAttention) for m in attns)
    assert {"q", "k", "v", "o"} <= set(text.lora_targets)


def test_class_embeddings_average_normalised_prompts():
    text = build_text_encoder(tiny_card("clip-vit-b16"), pretrained=False)
    prompts = [["a cell", "an image of a cell"], ["a nucleus"]]
    with torch.no_grad():
        weights = text.class_embeddings(prompts)
        each = text.encode(["a cell", "an image of a cell", "a nucleus"])
    first = torch.nn.functional.normalize(each[:2].mean(0), dim=-1)
    torch.testing.assert_close(weights[0], first)
    torch.testing.assert_close(weights[1], each[2])
    with pytest.raises(ValueError, match="at least one prompt"):
        text.class_embeddings([["a"], []])


def test_snapshot_config_and_converted_checkpoint(tmp_path):
    card = tiny_card("quilt")
    clip = _tiny_clip(card)
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": card.model_kwargs}))
    torch.save(clip.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    text = build_text_encoder(card, weights=snapshot)
    # a state dict saved after the attention conversion loads back as well
    converted = {**{k: v for k, v in clip.state_dict().items() if k.startswith("visual.")},
                 **text.model.state_dict(), "logit_scale": clip.logit_scale.detach()}
    _save(converted, tmp_path / "converted.safetensors")
    again = build_text_encoder(card, weights=tmp_path / "converted.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again.encode(PROMPTS), text.encode(PROMPTS))


def test_image_tower_alone_has_no_text_weights(tmp_path):
    card = tiny_card("clip-vit-b16")
    _save(_tiny_clip(card).visual.state_dict(), tmp_path / "visual.safetensors")
    with pytest.raises(CheckpointError, match="holds no text tower"):
        build_text_encoder(card, weights=tmp_path / "visual.safetensors")


def test_image_only_cards_say_so():
    with pytest.raises(NoTextTowerError, match="image-only") as info:
        build_text_encoder(tiny_card("uni"), pretrained=False)
    assert "clip-vit-b16" in str(info.value)
    assert {"clip-vit-b16", "clip-vit-l14", "quilt", "quilt-b16", "biomedclip"} <= set(text_cards())
    assert not get_card("uni").text_tower and not get_card("vit-b16").text_tower


# --- BiomedCLIP: PubMedBERT through open_clip's HFTextEncoder, tokenizer from a directory ----

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cytology", "image", "of", "cell",
         "malignant", "benign", "pap", "smear", ".", "x"]


@pytest.fixture(scope="module")
def bert_tokenizer_dir(tmp_path_factory):
    """A BERT WordPiece tokenizer written locally (as `hf download` would leave the real one)."""
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("bert_tokenizer")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(str(folder))
    return folder


def test_biomedclip_text_tower_with_a_local_tokenizer(tmp_path, bert_tokenizer_dir):
    from transformers import AutoTokenizer

    card = tiny_card("biomedclip")
    assert card.model_kwargs["text_cfg"]["context_length"] == 256
    text = build_text_encoder(card, pretrained=False, tokenizer=str(bert_tokenizer_dir))
    tokens = text.tokenize(PROMPTS)
    reference = AutoTokenizer.from_pretrained(str(bert_tokenizer_dir))(PROMPTS[0])["input_ids"]
    assert tokens.shape == (3, 256) and tokens[0, :len(reference)].tolist() == reference
    assert 1 not in reference  # every word is in the vocabulary: no [UNK]
    assert {"q", "k", "v", "o"} <= set(text.lora_targets)
    with torch.no_grad():
        embedded = text.encode(PROMPTS)
    assert embedded.shape == (3, 32)

    # its weights come from the same CustomTextCLIP checkpoint ('text.*' keys) as the image tower
    state = {f"text.{k}": v for k, v in text.model.state_dict().items()}
    state["logit_scale"] = torch.tensor(1.5)
    state["visual.trunk.cls_token"] = torch.zeros(1, 1, 32)  # ignored by the text tower
    _save(state, tmp_path / "biomedclip.safetensors")
    other = build_text_encoder(card, weights=tmp_path / "biomedclip.safetensors",
                               tokenizer=str(bert_tokenizer_dir))
    with torch.no_grad():
        torch.testing.assert_close(other.encode(PROMPTS), embedded)
    assert float(other.logit_scale) == pytest.approx(float(torch.tensor(1.5).exp()))


def test_biomedclip_model_config_comes_from_the_tokenizer_directory(tmp_path, bert_tokenizer_dir):
    from transformers import BertConfig

    card = tiny_card("biomedclip")
    text_cfg = {k: v for k, v in card.model_kwargs["text_cfg"].items() if k != "hf_model_config"}
    real_like = card.with_overrides(model_kwargs={**card.model_kwargs, "text_cfg": text_cfg},
                                    tokenizer=str(tmp_path / "bert"))
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_text_encoder(real_like, pretrained=False)
    import shutil

    shutil.copytree(bert_tokenizer_dir, tmp_path / "bert")
    with pytest.raises(WeightsUnavailableError, match="--tokenizer"):  # no config.json there
        build_text_encoder(real_like, pretrained=False)
    BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32, max_position_embeddings=256).save_pretrained(tmp_path / "bert")
    text = build_text_encoder(real_like, pretrained=False)
    assert text.model.transformer.config.hidden_size == 16
    assert text.encode(PROMPTS[:1]).shape == (1, 32)


def test_the_real_biomedclip_card_names_its_hub_tokenizer():
    card = get_card("biomedclip")
    text_cfg = card.model_kwargs["text_cfg"]
    assert text_cfg["hf_tokenizer_name"] == "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    assert text_cfg["hf_pooler_type"] == "cls_last_hidden_state_pooler"
    assert card.text_tower and card.tokenizer is None


def test_cards_made_from_open_clip_names_have_their_text_tower():
    import open_clip

    card = get_card("open_clip:ViT-B-32")
    assert card.text_tower
    family = get_family(card.family)
    assert family.text_config(card)["text_cfg"] == open_clip.get_model_config("ViT-B-32")["text_cfg"]
