"""cytotune's own timm model names, registered with timm's model registry.

open_clip's ``TimmModel`` image tower (BiomedCLIP) builds its trunk with
``timm.create_model(name)`` and no other arguments, so a small variant of such a tower needs a
timm *name* for a small ViT. :func:`register_timm_models` adds those names (idempotent).
"""
from __future__ import annotations

# name -> keyword arguments for timm's vit_base_patch16_224 entrypoint (same classes and blocks)
TINY_TIMM_VITS = {
    "cytotune_tiny_vit_patch8_32": dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2),
}

_REGISTERED = False


def register_timm_models() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    import timm
    from timm.models import register_model

    for name, args in TINY_TIMM_VITS.items():
        if timm.is_model(name):
            continue

        def entrypoint(pretrained: bool = False, _args=args, **kwargs):
            if pretrained:
                raise ValueError("cytotune's tiny test ViTs have no pretrained weights")
            for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
                kwargs.pop(key, None)
            return timm.create_model("vit_base_patch16_224", pretrained=False, **{**_args, **kwargs})

        entrypoint.__name__ = name
        entrypoint.__qualname__ = name
        entrypoint.__module__ = __name__
        register_model(entrypoint)
    _REGISTERED = True
