"""Full fine-tuning runs (the whole backbone trained) through predict and both export formats."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from cytotune.inference import ONNX_ATOL, export, load
from cytotune.models import build_backbone, get_card

from inference_helpers import prob_columns


def test_full_run_exports_its_fine_tuned_backbone(trained_run, tmp_path, run_readme):
    run = trained_run("uni", method="full")
    model = load(run)
    fresh = build_backbone(get_card("uni-tiny"), pretrained=False).model.state_dict()
    # the loaded backbone is the fine-tuned one, not a rebuilt initial one
    tuned = model.backbone.model.state_dict()
    assert any(not torch.equal(tuned[k], fresh[k]) for k in fresh)
    reference = pd.read_csv(run / "predictions.csv")

    export(run, tmp_path / "st", format="safetensors")
    got = pd.DataFrame(run_readme(tmp_path / "st")["predict"](list(reference["path"])))
    np.testing.assert_allclose(got.to_numpy(), reference[prob_columns(reference)].to_numpy(),
                               rtol=0, atol=1e-5)

    export(run, tmp_path / "onnx", format="onnx")
    check = json.loads((tmp_path / "onnx" / "export.json").read_text())["onnx"]
    assert check["max_abs_diff_probabilities"] <= ONNX_ATOL
    got = pd.DataFrame(run_readme(tmp_path / "onnx")["predict"](list(reference["path"])))
    np.testing.assert_allclose(got.to_numpy(), reference[prob_columns(reference)].to_numpy(),
                               rtol=0, atol=ONNX_ATOL)


def test_multilabel_run_exports_sigmoid_outputs(synthetic_data, tmp_path, run_readme):
    import cytotune
    from cytotune.data import write_synthetic_manifest

    csv = write_synthetic_manifest(synthetic_data, tmp_path / "ml.csv", multi_label=True)
    run = tmp_path / "run"
    cytotune.train(data=str(csv), multi_label=True, model="uni-tiny", method="lora", shots=2,
                   lr=2e-2, out=str(run), steps=4, val_every=2, batch_size=8, pretrained=False,
                   num_workers=0, cache_dir=None)
    reference = pd.read_csv(run / "predictions.csv", keep_default_na=False)
    expected = reference[prob_columns(reference)].to_numpy()
    for fmt, atol in (("safetensors", 1e-5), ("onnx", ONNX_ATOL)):
        export(run, tmp_path / fmt, format=fmt)
        got = pd.DataFrame(run_readme(tmp_path / fmt)["predict"](list(reference["path"])))
        np.testing.assert_allclose(got.to_numpy(), expected, rtol=0, atol=atol)
    assert not np.allclose(expected.sum(1), 1.0)  # sigmoids, not a softmax
