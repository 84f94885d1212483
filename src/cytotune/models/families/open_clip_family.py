"""open_clip models (CLIP ViTs, BiomedCLIP, QuiltNet, ...): the image tower, and on request the
text tower of the same checkpoint (``build_text_tower``, for cards with ``text_tower=True``).

Card fields used: ``source`` (an open_clip architecture such as ``ViT-B-16``, or
``hf-hub:<repo>``), ``pretrained`` (the open_clip pretrained tag for architecture sources),
``model_kwargs = {"embed_dim", "vision_cfg", "quick_gelu"}`` (the vision part of the open_clip
model config, so random-init and local builds need no download; for hub repos the repository's
``open_clip_config.json``, when present, is authoritative).

The text tower's config is the checkpoint's ``text_cfg``, else ``model_kwargs["text_cfg"]``, else
open_clip's packaged model config of ``card.architecture``; its tokenizer is open_clip's own
(packaged BPE, or ``HFTokenizer`` from the hub or a local directory for HF text towers).

The feature is what ``CLIP.encode_image`` returns (tower output incl. its projection). After
loading, ``nn.MultiheadAttention`` layers are replaced by :class:`FusedSelfAttention` so LoRA can
target q/k/v slices of ``attn.in_proj`` (see ``cytotune.models.attention``).
"""
from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cytotune.models import hub
from cytotune.models.card import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ModelCard, Preprocessing
from cytotune.models.checkpoint import (config_file, load_strict, read_json, read_state_dict_file,
                                        read_weights)
from cytotune.models.errors import CheckpointError, UnknownModelError, WeightsUnavailableError
from cytotune.models.families.base import Family, TextTower
from cytotune.models.targets import (OPEN_CLIP_VIT_TARGETS, matching_targets, merge_targets,
                                     pick_default_targets, timm_vit_targets)

if TYPE_CHECKING:  # torch is imported where a model is built, not here
    from torch import nn

log = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
CONFIG_NAME = "open_clip_config.json"
# native open_clip ViT blocks, and timm trunks inside open_clip's TimmModel
OPEN_CLIP_TARGETS = merge_targets(OPEN_CLIP_VIT_TARGETS, timm_vit_targets("trunk."))
_IGNORED_CFG_KEYS = {"timm_model_pretrained"}
# top-level keys of a CLIP state dict that belong to its text tower
_NATIVE_TEXT_KEYS = {"token_embedding", "positional_embedding", "transformer", "ln_final",
                     "text_projection", "cls_emb"}
# text_cfg keys of cytotune's own (not open_clip's CLIPTextCfg)
_CYTOTUNE_TEXT_KEYS = {"hf_model_config"}
# a tiny BERT text tower keeps BERT-base's uncased WordPiece vocabulary size, so real BERT
# tokenizers fit it
_TINY_BERT = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 512}


def _hf_source(card: ModelCard, text_cfg: dict[str, Any], tokenizer: Optional[str]) -> str:
    """Where an HF tokenizer (and its config.json) come from: argument, card, model config."""
    source = tokenizer or card.tokenizer or text_cfg.get("hf_tokenizer_name") \
        or text_cfg["hf_model_name"]
    path = Path(source).expanduser()
    # hub ids are "org/name"; anything else that looks like a path is a local directory
    looks_local = path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local and not path.is_dir():
        raise WeightsUnavailableError(f"card '{card.name}': tokenizer directory {path} does not "
                                      f"exist", card_name=card.name)
    return str(path) if looks_local else source


def _hf_help(card: ModelCard, source: str, what: str, exc: Exception) -> str:
    return (f"card '{card.name}': could not load the Hugging Face {what} from '{source}' "
            f"({type(exc).__name__}: {exc}). Offline, download that repository once (e.g. "
            f"`huggingface-cli download {source} --local-dir DIR`) and pass --tokenizer DIR "
            f"(model.tokenizer in YAML); the directory needs the tokenizer files and config.json")


def _tower_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"embed_dim": int(cfg["embed_dim"]), "vision_cfg": dict(cfg["vision_cfg"]),
                "quick_gelu": bool(cfg.get("quick_gelu", False))}
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"open_clip model config without embed_dim/vision_cfg: {exc}") from exc


def _structure(cfg: dict[str, Any]) -> dict[str, Any]:
    vision = {k: v for k, v in cfg["vision_cfg"].items() if k not in _IGNORED_CFG_KEYS}
    return {**cfg, "vision_cfg": vision}


class OpenClipFamily(Family):
    name = "open_clip"
    naming_help = ("open_clip:<arch>[:<pretrained tag>]  any open_clip model, e.g. "
                   "open_clip:ViT-B-32:laion2b_s34b_b79k (or open_clip:hf-hub:<org>/<repo>)")
    weight_files = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                    "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
    hub_weight_files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

    # -- architecture ---------------------------------------------------------------------------
    def tower_config(self, card: ModelCard, model_cfg: Optional[dict] = None) -> dict[str, Any]:
        """embed_dim / vision_cfg / quick_gelu: from a checkpoint's config if given, else the card."""
        ours = _tower_cfg(card.model_kwargs)
        if model_cfg is None:
            return ours
        theirs = _tower_cfg(model_cfg)
        if _structure(theirs) != _structure(ours):
            log.warning("card '%s': the checkpoint's open_clip config differs from the card's "
                        "(card %s, checkpoint %s); building what the checkpoint says",
                        card.name, _structure(ours), _structure(theirs))
        return theirs

    def create(self, card: ModelCard, model_cfg: Optional[dict] = None) -> nn.Module:
        from open_clip.model import _build_vision_tower

        from cytotune.models.timm_extra import register_timm_models
        register_timm_models()
        cfg = self.tower_config(card, model_cfg)
        vision_cfg = {**cfg["vision_cfg"], "timm_model_pretrained": False}  # never download here
        return _build_vision_tower(cfg["embed_dim"], vision_cfg, quick_gelu=cfg["quick_gelu"])

    def prepare(self, card: ModelCard, model: nn.Module) -> nn.Module:
        from cytotune.models.attention import convert_multihead_attention

        convert_multihead_attention(model)
        return model

    # -- weights --------------------------------------------------------------------------------
    @staticmethod
    def _model_cfg_from(path: Optional[Path]) -> Optional[dict]:
        if path is None:
            return None
        full = read_json(path)
        return full.get("model_cfg", full)

    @staticmethod
    def visual_state_dict(state_dict: dict, model: nn.Module) -> dict:
        """The image-tower part of a checkpoint: ``visual.`` keys of a full CLIP, or all keys."""
        if any(k.startswith("visual.") for k in state_dict):
            state_dict = {k[len("visual."):]: v for k, v in state_dict.items()
                          if k.startswith("visual.")}
        return _native_in_proj_keys(state_dict, model)

    def _load(self, card: ModelCard, state_dict: dict, source: str,
              model_cfg: Optional[dict]) -> nn.Module:
        model = self.create(card, model_cfg)
        load_strict(model, self.visual_state_dict(state_dict, model), card.name, source)
        return model

    def load_local(self, card: ModelCard, path: Path) -> nn.Module:
        model_cfg = self._model_cfg_from(config_file(path, CONFIG_NAME))
        state_dict, file = read_weights(path, self.weight_files)
        return self._load(card, state_dict, str(file), model_cfg)

    def _location(self, card: ModelCard) -> tuple[Optional[str], tuple[str, ...], Optional[str]]:
        """(hub repo, candidate files, url) of the card's pretrained weights."""
        if card.source.startswith(HF_HUB_PREFIX):
            return card.source[len(HF_HUB_PREFIX):], self.hub_weight_files, None
        if not card.pretrained:
            raise WeightsUnavailableError(
                f"card '{card.name}' names no open_clip pretrained tag; use pretrained=False for "
                f"random init or weights=PATH", card_name=card.name)
        from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

        tag_cfg = get_pretrained_cfg(card.source, card.pretrained)
        if not tag_cfg:
            tags = ", ".join(list_pretrained_tags_by_model(card.source)) or "none"
            raise WeightsUnavailableError(
                f"card '{card.name}': open_clip has no pretrained tag '{card.pretrained}' for "
                f"'{card.source}' (known tags: {tags})", card_name=card.name)
        if tag_cfg.get("hf_hub"):
            # open_clip's convention: "org/repo/" (default file names) or "org/repo/filename"
            repo, filename = os.path.split(tag_cfg["hf_hub"])
            files = hub.with_safetensors_first(filename) if filename else self.hub_weight_files
            return repo, files, None
        if tag_cfg.get("url"):
            return None, (), tag_cfg["url"]
        raise WeightsUnavailableError(f"card '{card.name}': open_clip lists no download location "
                                      f"for {card.source}/{card.pretrained}", card_name=card.name)

    def weights_location(self, card: ModelCard) -> Optional[str]:
        try:
            repo, _, url = self._location(card)
        except WeightsUnavailableError:
            return None
        return repo or url

    def weights_source(self, card: ModelCard) -> Optional[hub.WeightsSource]:
        try:
            repo, files, url = self._location(card)
        except WeightsUnavailableError:
            return None
        return hub.WeightsSource("hf-hub", repo, tuple(files)) if repo else hub.WeightsSource("url", url)

    def _pretrained_state_dict(self, card: ModelCard) -> tuple[dict, str, Optional[dict], str]:
        """(state dict, file, open_clip model config or None, origin) of the published weights."""
        repo, files, url = self._location(card)
        model_cfg = None
        if repo is not None:
            if card.source.startswith(HF_HUB_PREFIX):
                model_cfg = self._model_cfg_from(hub.fetch_file(card, repo, (CONFIG_NAME,),
                                                                required=False))
            file = hub.fetch_file(card, repo, files)
            origin = f"hf-hub:{repo}"
        else:
            file = hub.download_url(card, url)
            origin = f"url:{url}"
        return read_state_dict_file(file), str(file), model_cfg, origin

    def load_pretrained(self, card: ModelCard) -> tuple[nn.Module, str]:
        state_dict, file, model_cfg, origin = self._pretrained_state_dict(card)
        return self._load(card, state_dict, file, model_cfg), origin

    # -- text tower -----------------------------------------------------------------------------
    def text_config(self, card: ModelCard, model_cfg: Optional[dict] = None) -> dict[str, Any]:
        """embed_dim / quick_gelu / text_cfg of the card's text tower.

        text_cfg comes from a checkpoint's own open_clip config when it has one, else the card's
        ``model_kwargs["text_cfg"]``, else open_clip's packaged model config of
        ``card.architecture`` (so the numbers are read from the installed library, not copied).
        """
        cfg = self.tower_config(card, model_cfg)
        text_cfg = (model_cfg or {}).get("text_cfg") or card.model_kwargs.get("text_cfg")
        if not text_cfg:
            import open_clip

            arch = card.architecture or card.source
            text_cfg = (open_clip.get_model_config(arch) or {}).get("text_cfg")
            if not text_cfg:
                raise CheckpointError(
                    f"card '{card.name}': no text_cfg in its model_kwargs and open_clip has no "
                    f"model config '{arch}' to read one from")
        return {**cfg, "text_cfg": dict(text_cfg)}

    def create_text(self, card: ModelCard, cfg: dict[str, Any],
                    tokenizer: Optional[str] = None) -> nn.Module:
        """The text tower with random weights, as open_clip builds it inside CLIP/CustomTextCLIP."""
        from open_clip.model import _build_text_tower

        text_cfg = {k: v for k, v in cfg["text_cfg"].items() if k not in _CYTOTUNE_TEXT_KEYS}
        if not text_cfg.get("hf_model_name"):
            return _build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu=cfg["quick_gelu"])
        from open_clip.hf_model import HFTextEncoder

        pooler = text_cfg.get("hf_pooler_type", "mean_pooler")
        encoder = HFTextEncoder(text_cfg["hf_model_name"], output_dim=cfg["embed_dim"],
                                config=self._hf_config(card, cfg["text_cfg"], tokenizer),
                                pooler_type=pooler, proj_type=text_cfg.get("hf_proj_type", "mlp"))
        if pooler != "cls_pooler" and getattr(encoder.transformer, "pooler", None) is not None:
            # open_clip loads the pretrained model with add_pooling_layer=False for other poolers
            encoder.transformer.pooler = None
        return encoder

    @staticmethod
    def _hf_config(card: ModelCard, text_cfg: dict[str, Any], tokenizer: Optional[str]):
        """The transformers config of an HF text tower: the card's ``hf_model_config``, else the
        ``config.json`` beside the tokenizer (local directory or hub)."""
        from transformers import AutoConfig

        if text_cfg.get("hf_model_config"):
            values = dict(text_cfg["hf_model_config"])
            return AutoConfig.for_model(values.pop("model_type"), **values)
        source = _hf_source(card, text_cfg, tokenizer)
        try:
            return AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise WeightsUnavailableError(_hf_help(card, source, "model config", exc),
                                          card_name=card.name) from exc

    def text_tokenizer(self, card: ModelCard, text_cfg: dict[str, Any],
                       tokenizer: Optional[str] = None):
        """open_clip's own tokenizer for the tower: its packaged BPE (CLIP) or HFTokenizer."""
        from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

        context = int(text_cfg.get("context_length", 77))
        kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
        if not (text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")):
            return SimpleTokenizer(context_length=context, **kwargs)
        source = _hf_source(card, text_cfg, tokenizer)
        try:
            return HFTokenizer(source, context_length=context, **kwargs)
        except (OSError, ValueError) as exc:
            raise WeightsUnavailableError(_hf_help(card, source, "tokenizer", exc),
                                          card_name=card.name) from exc

    @staticmethod
    def text_state_dict(state_dict: dict, model: nn.Module, source: str
                        ) -> tuple[dict, Optional[float]]:
        """The text-tower part of a full checkpoint and exp(logit_scale) (None if absent)."""
        scale = state_dict.get("logit_scale")
        if any(k.startswith("text.") for k in state_dict):  # CustomTextCLIP (HF text towers)
            sub = {k[len("text."):]: v for k, v in state_dict.items() if k.startswith("text.")}
        elif "token_embedding.weight" in state_dict:  # CLIP keeps the text tower at top level
            sub = {k: v for k, v in state_dict.items()
                   if k.split(".", 1)[0] in _NATIVE_TEXT_KEYS}
        else:
            preview = ", ".join(sorted(state_dict)[:6])
            raise CheckpointError(
                f"{source} holds no text tower (no 'token_embedding.weight' or 'text.*' keys; "
                f"found {preview}, ...): it is an image tower alone. Zero-shot, text-initialised "
                f"heads and text LoRA need the full open_clip checkpoint")
        return _native_in_proj_keys(sub, model), (float(scale.float().exp().reshape(-1)[0]) if scale is not None else None)

    def build_text_tower(self, card: ModelCard, *, pretrained: bool = True,
                         weights: Optional[Path] = None, tokenizer: Optional[str] = None):
        from cytotune.models.attention import convert_multihead_attention

        state_dict, source, model_cfg = None, "", None
        if weights is not None:
            model_cfg = self._model_cfg_from(config_file(weights, CONFIG_NAME))
            state_dict, file = read_weights(weights, self.weight_files)
            source, origin = str(file), f"local:{weights}"
        elif pretrained:
            state_dict, source, model_cfg, origin = self._pretrained_state_dict(card)
        else:
            origin = "random-init"
        cfg = self.text_config(card, model_cfg)
        model = self.create_text(card, cfg, tokenizer)
        scale = 1 / 0.07  # open_clip's initial logit scale
        if state_dict is not None:
            text_sd, found = self.text_state_dict(state_dict, model, source)
            load_strict(model, text_sd, card.name, source,
                        ignore_unexpected=lambda k: k.endswith("position_ids"))
            if found is None:
                log.warning("%s has no logit_scale; using open_clip's initial 1/0.07", source)
            scale = found if found is not None else scale
        convert_multihead_attention(model)
        return TextTower(model=model.eval(), tokenizer=self.text_tokenizer(
            card, cfg["text_cfg"], tokenizer), logit_scale=scale, origin=origin)

    def tiny_card(self, card: ModelCard) -> ModelCard:
        from cytotune.models.timm_extra import TINY_TIMM_VITS

        cfg = _tower_cfg(card.model_kwargs)
        vision = dict(cfg["vision_cfg"])
        if vision.get("timm_model_name"):  # TimmModel tower: a small timm ViT under the same head
            vision.update(timm_model_name=next(iter(TINY_TIMM_VITS)), image_size=32)
        elif isinstance(vision.get("layers", 12), int):
            patch = 16 if vision.get("patch_size", 16) >= 32 else 8
            vision.update(image_size=32, layers=2, width=64, head_width=32, patch_size=patch)
        else:
            return Family.tiny_card(self, card)  # ModifiedResNet towers: not needed so far
        kwargs = {**cfg, "embed_dim": 32, "vision_cfg": vision}
        if card.text_tower:  # same tower type and tokenizer, small width and depth
            text = self.text_config(card)["text_cfg"]
            if text.get("hf_model_name"):
                text["hf_model_config"] = dict(_TINY_BERT)
            else:
                text.update(width=32, heads=2, layers=2)
            kwargs["text_cfg"] = text
        return card.with_overrides(model_kwargs=kwargs)

    # -- cards on the fly -----------------------------------------------------------------------
    def card_from_name(self, spec: str) -> ModelCard:
        import open_clip
        import torch
        from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

        name = f"open_clip:{spec}"
        tag_cfg: dict = {}
        if spec.startswith(HF_HUB_PREFIX):
            repo = spec[len(HF_HUB_PREFIX):]
            probe = ModelCard(name=name, family=self.name, source=spec, feature_dim=0)
            full = read_json(hub.fetch_file(probe, repo, (CONFIG_NAME,)))
            model_cfg, pre_cfg = full.get("model_cfg", full), full.get("preprocess_cfg", {})
            source, tag, arch = spec, None, None
            homepage = f"https://huggingface.co/{repo}"
        else:
            arch, _, tag = spec.partition(":")
            model_cfg = open_clip.get_model_config(arch)
            if model_cfg is None:
                close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.6)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise UnknownModelError(f"open_clip has no model '{arch}'.{hint}", name=name,
                                        suggestions=[f"open_clip:{c}" for c in close])
            if tag:
                tag_cfg = get_pretrained_cfg(arch, tag)
                if not tag_cfg:
                    tags = list_pretrained_tags_by_model(arch)
                    raise UnknownModelError(
                        f"open_clip has no pretrained tag '{tag}' for '{arch}'; known tags: "
                        f"{', '.join(tags) or 'none'}", name=name,
                        suggestions=[f"open_clip:{arch}:{t}" for t in tags])
            pre_cfg, source = tag_cfg, arch
            homepage = "https://github.com/mlfoundations/open_clip"
        cfg = _tower_cfg(model_cfg)
        cfg["quick_gelu"] = cfg["quick_gelu"] or bool(tag_cfg.get("quick_gelu", False))
        if model_cfg.get("text_cfg"):
            cfg["text_cfg"] = dict(model_cfg["text_cfg"])
        size = cfg["vision_cfg"].get("image_size", 224)
        size = int(size if isinstance(size, int) else max(size))
        # open_clip resizes the shorter side to the input size then center-crops ('shortest');
        # 'squash' (SigLIP) resizes both sides: the same for square images
        pre = Preprocessing(image_size=size, mean=tuple(pre_cfg.get("mean", OPENAI_CLIP_MEAN)),
                            std=tuple(pre_cfg.get("std", OPENAI_CLIP_STD)),
                            interpolation=pre_cfg.get("interpolation", "bicubic"), resize_size=size)
        card = ModelCard(name=name, family=self.name, source=source, pretrained=tag or None,
                         architecture=arch, feature_dim=cfg["embed_dim"], preprocessing=pre,
                         pooling="model", model_kwargs=cfg, licence="see the model page",
                         text_tower="text_cfg" in cfg,
                         description=f"open_clip image tower {spec} (card made from open_clip's "
                                     f"registry)", homepage=homepage)
        with torch.device("meta"):
            model = self.prepare(card, self.create(card))
        targets = matching_targets(model, OPEN_CLIP_TARGETS)
        return card.with_overrides(lora_targets=targets,
                                   default_lora_targets=pick_default_targets(targets))


def _native_in_proj_keys(state_dict: dict, model: nn.Module) -> dict:
    """``state_dict`` with the fused attention projection under the names ``model`` expects: a
    checkpoint saved after cytotune's MHA conversion says ``attn.in_proj.weight`` where a
    native ``nn.MultiheadAttention`` has ``attn.in_proj_weight`` (likewise the bias)."""
    expected = model.state_dict().keys()
    out = {}
    for key, value in state_dict.items():
        if key not in expected:
            alt = key.replace(".in_proj.weight", ".in_proj_weight").replace(
                ".in_proj.bias", ".in_proj_bias")
            key = alt if alt in expected else key
        out[key] = value
    return out
