"""``compile: true`` trains the same model through torch.compile: same results as eager."""
from __future__ import annotations

import numpy as np
import pytest

import cytotune


@pytest.mark.slow
def test_compiled_lora_run_matches_eager(synthetic_data):
    common = dict(data=str(synthetic_data), model="uni-tiny", pretrained=False, method="lora",
                  shots=2, steps=4, val_every=2, cache_dir=None, device="cpu")
    compiled = cytotune.train(**common, compile=True)
    eager = cytotune.train(**common)
    assert compiled.config.optim.compile and not eager.config.optim.compile
    assert compiled.metrics["best_step"] == eager.metrics["best_step"]
    np.testing.assert_allclose(compiled.predictions.filter(like="prob_").to_numpy(),
                               eager.predictions.filter(like="prob_").to_numpy(), atol=1e-5)
