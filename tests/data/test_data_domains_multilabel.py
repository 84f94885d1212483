"""Multi-label manifests, the domain column, train/test domains and leave-one-domain-out."""
import numpy as np
import pytest

from cytotune.data import (DataError, domain_pools, few_shot_multilabel, leave_one_domain_out,
                           read_csv, write_synthetic_manifest)
from cytotune.data.dataset import rarest_label_strata
from cytotune.training.config import TrainConfig
from cytotune.training.runner import select_indices


def _write(tmp_path, header, rows, name="m.csv"):
    """A CSV whose row i names its own empty file img<i>.png (an image listed twice is an
    error; readers only check that files exist)."""
    rows = [r.replace("img.png", f"img{i}.png", 1) for i, r in enumerate(rows)]
    for i in range(len(rows)):
        (tmp_path / f"img{i}.png").write_bytes(b"")
    lines = [header] + [r for r in rows]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_zero_one_columns_and_joined_names_give_the_same_targets(tmp_path):
    columns = _write(tmp_path, "path,a,b,c", ["img.png,1,0,1", "img.png,0,0,0", "img.png,0,1,1"])
    data = read_csv(columns, label_columns="a,b,c")
    assert data.multi_label and data.class_names == ["a", "b", "c"]
    assert data.targets.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 1]]
    joined = _write(tmp_path, "path,label", ["img.png,a|c", "img.png,", "img.png,c | b"], "j.csv")
    again = read_csv(joined, multi_label=True)
    assert again.class_names == ["a", "b", "c"] and again.targets.tolist() == data.targets.tolist()
    # strata: rarest positive label (a and b: 1 positive each, c: 2), L for "no label"
    assert data.labels.tolist() == [0, 3, 1]
    assert rarest_label_strata(np.array([[1, 1], [0, 1]])).tolist() == [0, 1]


def test_unknown_label_names_its_row_and_column(tmp_path):
    path = _write(tmp_path, "path,label", ["img.png,a", "img.png,a|zebra"])
    with pytest.raises(DataError, match=r"m.csv row 3, column 'label': unknown label 'zebra'"):
        read_csv(path, multi_label=True, label_names=["a", "b"])


def test_a_value_other_than_zero_or_one_names_its_row_and_column(tmp_path):
    path = _write(tmp_path, "path,a,b", ["img.png,1,0", "img.png,yes,1"])
    with pytest.raises(DataError, match=r"m.csv row 3, column 'a': 'yes' is not 0 or 1"):
        read_csv(path, label_columns=["a", "b"])


def test_an_all_negative_label_column_is_an_error_naming_it(tmp_path):
    path = _write(tmp_path, "path,a,b", ["img.png,1,0", "img.png,1,0"])
    with pytest.raises(DataError, match=r"column 'b': all-negative"):
        read_csv(path, label_columns=["a", "b"])
    joined = _write(tmp_path, "path,label", ["img.png,a", "img.png,a"], "j.csv")
    with pytest.raises(DataError, match=r"label 'b' \(column 'label'\): all-negative"):
        read_csv(joined, multi_label=True, label_names="a,b")


def test_a_missing_label_column_is_named(tmp_path):
    path = _write(tmp_path, "path,a", ["img.png,1"])
    with pytest.raises(DataError, match=r"no label column\(s\) \['b'\]"):
        read_csv(path, label_columns=["a", "b"])


def test_missing_domain_value_names_row_and_column(tmp_path):
    path = _write(tmp_path, "path,label,domain", ["img.png,x,centre1", "img.png,y,"])
    with pytest.raises(DataError, match=r"m.csv row 3, column 'domain': missing domain"):
        read_csv(path)
    ok = _write(tmp_path, "path,label,domain", ["img.png,x,c1", "img.png,y,c2"], "ok.csv")
    assert read_csv(ok).domains.tolist() == ["c1", "c2"]


def test_few_shot_multilabel_gives_every_label_k_positives():
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 4)) < [0.5, 0.2, 0.1, 0.05]).astype(np.uint8)
    pool = np.arange(150)
    for k in (1, 3, 5):
        chosen = few_shot_multilabel(targets, pool, k, seed=1, label_names=list("abcd"))
        assert set(chosen) <= set(pool)
        assert (targets[chosen].sum(0) >= k).all()
        assert targets[chosen].sum(1).min() >= 1  # only images carrying a label are picked
        assert np.array_equal(chosen, few_shot_multilabel(targets, pool, k, 1, list("abcd")))
    with pytest.raises(DataError, match=r"training split has fewer for \d label\(s\): .*'d' has"):
        few_shot_multilabel(targets, pool, 10, seed=1, label_names=list("abcd"))


@pytest.fixture(scope="module")
def domain_manifest(synthetic_data, tmp_path_factory):
    return write_synthetic_manifest(synthetic_data, tmp_path_factory.mktemp("dom") / "d.csv",
                                    domains=("centre_a", "centre_b", "centre_c"))


def test_leave_one_domain_out_splits_never_mix_domains(domain_manifest):
    data = read_csv(domain_manifest)
    held = leave_one_domain_out(data)
    assert [d for d, _ in held] == ["centre_a", "centre_b", "centre_c"]
    for domain, pools in held:
        config = TrainConfig.from_dict({"data": {"source": str(domain_manifest),
                                                 "test_domains": [domain]}})
        for shots in (None, 2):
            config.shots = shots
            idx = select_indices(data, config)
            seen = set(data.domains[np.concatenate([idx.train, idx.val, idx.test])].tolist())
            assert domain not in seen and seen == set(pools.train_domains)
            assert set(data.domains[idx.test_ood].tolist()) == {domain}
            assert len(idx.test_ood) == int((data.domains == domain).sum())
            assert not set(idx.test_ood) & set(np.concatenate([idx.train, idx.val, idx.test]))


def test_train_and_test_domains_are_checked(domain_manifest, synthetic_data):
    data = read_csv(domain_manifest)
    pools = domain_pools(data, ["centre_a"], ["centre_c"])
    assert set(data.domains[pools.in_domain]) == {"centre_a"}  # centre_b is left out entirely
    with pytest.raises(DataError, match=r"unknown domain\(s\) \['centre_z'\]"):
        domain_pools(data, None, ["centre_z"])
    with pytest.raises(DataError, match="in both train_domains and test_domains"):
        domain_pools(data, ["centre_a"], ["centre_a"])
    no_domains = read_csv(write_synthetic_manifest(synthetic_data, domain_manifest.parent / "n.csv"))
    with pytest.raises(DataError, match="has no domains"):
        domain_pools(no_domains, None, ["centre_a"])
