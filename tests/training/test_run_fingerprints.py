"""Runs record what they started from and what they were tested on (issue 16, item 1): the
report pools runs by these fingerprints, so they must be stable across run seeds and change with
the weights or the test data."""
import shutil

from PIL import Image
from safetensors.torch import save_file

import cytotune
from cytotune.models import build_backbone, get_card

FAST = dict(method="linear", steps=3, val_every=3, batch_size=8, num_workers=0, lr=1e-3)


def _fingerprints(data, model, tmp_path, **options):
    result = cytotune.train(data=str(data), model=model, cache_dir=str(tmp_path / "cache"),
                            **{**FAST, **options})
    return result.metrics["fingerprints"], result.metrics["environment"]


def test_fingerprints_are_stable_across_seeds_and_change_with_weights_and_data(
        synthetic_data, tiny_model_names, tmp_path):
    model = tiny_model_names["uni"]
    weights = tmp_path / "w.safetensors"
    backbone = build_backbone(get_card(model), pretrained=False)
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(weights))

    first, env = _fingerprints(synthetic_data, model, tmp_path, weights=str(weights), seed=1)
    second, _ = _fingerprints(synthetic_data, model, tmp_path, weights=str(weights), seed=2)
    assert first == second and set(first) == {"test_data", "weights"}
    assert env["precision"] == "fp32" and env["cytotune"] == cytotune.__version__

    # other weights under the same model name
    other = tmp_path / "w2.safetensors"
    state = {k: v.contiguous() for k, v in backbone.model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 8)
    state[name] = state[name] + 0.5
    save_file(state, str(other))
    changed_weights, _ = _fingerprints(synthetic_data, model, tmp_path, weights=str(other), seed=1)
    assert changed_weights["weights"] != first["weights"]
    assert changed_weights["test_data"] == first["test_data"]

    # the same data set with every image mirrored: other test images, same class names
    edited = tmp_path / "edited"
    shutil.copytree(synthetic_data, edited)
    for image in sorted(edited.rglob("*.png")):
        with Image.open(image) as img:
            mirrored = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mirrored.save(image)
    edited_data, _ = _fingerprints(edited, model, tmp_path, weights=str(weights), seed=1)
    assert edited_data["test_data"] != first["test_data"]

def test_random_init_records_no_weights_fingerprint(synthetic_data, tiny_model_names, tmp_path):
    """A random initialisation is seeded by the run seed: fingerprinting it would split a cell by
    seed, so only the test data is recorded."""
    prints, _ = _fingerprints(synthetic_data, tiny_model_names["uni"], tmp_path, seed=1,
                              pretrained=False)
    assert set(prints) == {"test_data"}
