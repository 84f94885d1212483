"""Reading weights files safely and loading them strictly.

Files are read with safetensors or ``torch.load(weights_only=True)``, never by plain unpickling.
A directory is read the way the Hub stores a snapshot: the family lists the file names it
prefers (``open_clip_model.safetensors``, ``model.safetensors``, ``pytorch_model.bin``, ...),
sharded checkpoints (``*.index.json``) included.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

from cytotune.models.errors import CheckpointError, CheckpointMismatchError

if TYPE_CHECKING:  # torch is imported when weights are read, not with this module
    import torch
    from torch import nn

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

StateDict = dict[str, "torch.Tensor"]


def _is_tensor_dict(obj) -> bool:
    import torch

    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_state_dict_file(path: Path) -> StateDict:
    """Tensors of one weights file (.safetensors, or a torch file read with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.name.endswith(".index.json"):
        return _read_sharded(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    if path.suffix == ".npz":
        raise CheckpointError(f"{path}: numpy (.npz) checkpoints are not supported here; convert "
                              f"it to .safetensors with the model's own library first")
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds pickled Python objects that are not plain tensors; cytotune only reads "
            f"weights with torch.load(weights_only=True). Re-save the state dict "
            f"(torch.save(model.state_dict(), ...)) or as .safetensors. ({exc})") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch weights file "
                              f"(TorchScript archives are not supported): {exc}") from exc
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj, source: str = "checkpoint") -> StateDict:
    """The tensor dict inside a checkpoint (bare, or under "state_dict"/"model"/...; DDP prefix removed)."""
    if not _is_tensor_dict(obj):
        inner = None
        if isinstance(obj, Mapping):
            for key in _WRAPPER_KEYS:
                if _is_tensor_dict(obj.get(key)):
                    inner = obj[key]
                    break
            if inner is None:  # a checkpoint with a few non-tensor entries next to the weights
                import torch

                tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
                if tensors and len(tensors) >= len(obj) - 3:
                    inner = tensors
        if inner is None:
            what = f"keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{source} is not a state dict of tensors ({what})")
        obj = inner
    sd = dict(obj)
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _read_sharded(index_path: Path) -> StateDict:
    """The tensors of every shard an index names. A shard is a weights file: an index naming
    another index (itself, or a cycle of them: once a 2,987-line RecursionError) is refused
    with one line naming both, as is a ``weight_map`` that is not a name -> file mapping."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path} is not a sharded-checkpoint index: {exc}") from exc
    if not isinstance(weight_map, Mapping) or not all(
            isinstance(v, str) and v for v in weight_map.values()):
        raise CheckpointError(f"{index_path} is not a sharded-checkpoint index: its weight_map "
                              f"must map tensor names to shard file names")
    sd: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        if shard.endswith(".index.json"):
            same = " (this very file)" if shard == index_path.name else ""
            raise CheckpointError(f"{index_path} names {shard}{same} as a shard, but that is an "
                                  f"index itself; the shards of an index are weights files")
        sd.update(read_state_dict_file(index_path.parent / shard))
    return sd


def find_weights_file(directory: Path, preferred: Sequence[str]) -> Path:
    """The weights file of a directory: the first of ``preferred`` present, else the only one."""
    directory = Path(directory)
    for name in preferred:
        if (directory / name).is_file():
            return directory / name
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".index.json")))
    if len(files) == 1:
        return files[0]
    listing = ", ".join(p.name for p in sorted(directory.iterdir())) or "(empty)"
    if not files:
        raise CheckpointError(f"no weights file in {directory} (looked for {', '.join(preferred)} "
                              f"or any {'/'.join(WEIGHT_SUFFIXES)} file); it holds: {listing}")
    raise CheckpointError(f"{directory} holds several weights files ({listing}); pass the one to "
                          f"use as the weights path")


def read_weights(path: Path, preferred: Sequence[str]) -> tuple[StateDict, Path]:
    """State dict from a weights file or a snapshot directory, and the file actually read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"weights path {path} does not exist")
    file = find_weights_file(path, preferred) if path.is_dir() else path
    return read_state_dict_file(file), file


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def config_file(path: Path, name: str) -> Optional[Path]:
    """``path/name`` when ``path`` is a directory holding it, else None."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / name).is_file():
        return path / name
    return None


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], card_name: str,
                source: str, ignore_unexpected: Optional[Callable[[str], bool]] = None,
                note: str = "") -> None:
    """``load_state_dict(strict=True)``, raising :class:`CheckpointMismatchError` with the keys at fault.

    Keys for which ``ignore_unexpected(key)`` is true (e.g. a classifier head the card's model
    does not have) may be present in the checkpoint without being an error.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected
                  and not (ignore_unexpected is not None and ignore_unexpected(k))]
    mismatched = [f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)})"
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(card_name, source, missing, unexpected, mismatched, note)
    module.load_state_dict({k: state_dict[k] for k in expected}, strict=True)


def prefix_filter(prefixes: Sequence[str]) -> Callable[[str], bool]:
    """A predicate that is true for keys starting with any of ``prefixes``."""
    prefixes = tuple(prefixes)
    return lambda key: bool(prefixes) and key.startswith(prefixes)
