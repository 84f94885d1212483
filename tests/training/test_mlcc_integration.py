"""Real cytology data: ImageNet features must clearly beat random ones on MLCC, 10 shots."""
import cytotune


def test_pretrained_efficientnet_beats_random_weights_on_mlcc(mlcc_root, tmp_path):
    common = dict(data=str(mlcc_root), layout="mlcc", model="efficientnet-lite0", method="linear",
                  shots=10, seed=1, lr=1e-2, cache_dir=str(tmp_path / "cache"))
    pretrained = cytotune.train(pretrained=True, **common)
    random_init = cytotune.train(pretrained=False, **common)
    acc_pre = pretrained.metrics["test"]["balanced_accuracy"]
    acc_rand = random_init.metrics["test"]["balanced_accuracy"]
    print(f"MLCC 10-shot linear probe, balanced accuracy: ImageNet {acc_pre:.3f}, random {acc_rand:.3f}")
    assert pretrained.metrics["test"]["n"] == 189  # the whole test split (about 20 %, whole source-image groups)
    assert acc_pre > acc_rand + 0.15
    assert acc_pre > 0.6
