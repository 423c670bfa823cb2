"""Mixtures with exact ratios, deterministic by seed; grouping by field; the fixed validation split."""

import json
from collections import Counter

import pytest
from PIL import Image

from tbi_train.data import DataError, MixtureDataset, load_conversations, split_by, train_val_split


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    Image.new("RGB", (8, 8)).save(root / "i.png")
    (root / "v").mkdir()
    Image.new("RGB", (8, 8)).save(root / "v" / "0.png")
    records = []
    for i in range(50):
        lang = "ko" if i % 5 < 2 else "en"  # 20 ko, 30 en
        kind = ("video", "image", "text")[i % 3]
        media = {"video": {"video": "v/"}, "image": {"image": "i.png"}, "text": {}}[kind]
        q = "<image>\nQ" if media else "Q"
        records.append(
            {
                "id": f"s{i}",
                "language": lang,
                **media,
                "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": f"a{i}"}],
            }
        )
    (root / "d.json").write_text(json.dumps(records))
    return load_conversations(root / "d.json", num_frames=2)


def test_split_by_language_and_modality(dataset):
    by_lang = split_by(dataset, "language")
    assert {k: len(v) for k, v in by_lang.items()} == {"en": 30, "ko": 20}
    assert all(by_lang["ko"].describe(i).language == "ko" for i in range(20))
    assert {k: len(v) for k, v in split_by(dataset, "modality").items()} == {
        "image": 17,
        "text": 16,
        "video": 17,
    }
    with pytest.raises(DataError, match="language"):
        split_by(dataset, "colour")


@pytest.mark.parametrize(
    ("ratios", "n"), [({"ko": 0.4, "en": 0.6}, 45), ({"ko": 1, "en": 1}, 7), ({"ko": 1.0}, 33)]
)
def test_mixture_counts_follow_ratios_exactly(dataset, ratios, n):
    mix = MixtureDataset(split_by(dataset, "language"), ratios, num_samples=n, seed=1)
    assert len(mix) == n
    counts = Counter(mix.describe(i).language for i in range(n))
    total = sum(ratios.values())
    for name, r in ratios.items():
        assert abs(counts[name] - n * r / total) < 1
    assert sum(counts.values()) == n


def test_default_size_uses_each_sample_at_most_once(dataset):
    mix = MixtureDataset(split_by(dataset, "language"), {"ko": 0.4, "en": 0.6}, seed=0)
    assert len(mix) == 50
    assert mix.bad_report is dataset.bad_report  # one shared report, not counted twice
    ids = [mix.describe(i).id for i in range(len(mix))]
    assert len(set(ids)) == 50
    d1 = MixtureDataset(split_by(dataset, "modality"), {"video": 55, "image": 30, "text": 15}, seed=0)
    counts = Counter(d1.describe(i).modality for i in range(len(d1)))
    assert len(d1) == 30  # limited by video: 17 / 0.55
    assert counts == {"video": 16, "image": 9, "text": 5}


def test_mixture_is_deterministic_by_seed_and_oversamples_evenly(dataset):
    groups = split_by(dataset, "language")
    order = [MixtureDataset(groups, {"ko": 0.5, "en": 0.5}, 100, seed=s) for s in (3, 3, 4)]
    ids = [[m.describe(i).id for i in range(100)] for m in order]
    assert ids[0] == ids[1] and ids[0] != ids[2]
    ko = Counter(i for i in ids[0] if order[0].describe(ids[0].index(i)).language == "ko")
    assert sorted(set(ko.values())) in ([2], [2, 3], [3])  # 50 draws over 20 samples: each 2-3 times
    assert order[0][0].id == ids[0][0]


def test_mixture_errors_name_the_component(dataset):
    groups = split_by(dataset, "language")
    with pytest.raises(DataError, match="jp"):
        MixtureDataset(groups, {"jp": 1.0})
    with pytest.raises(DataError, match="positive sum"):
        MixtureDataset(groups, {"ko": 0.0})


def test_validation_split_is_fixed_disjoint_and_order_independent(dataset):
    train, val = train_val_split(dataset, 10, seed=0)
    assert len(train) == 40 and len(val) == 10
    val_ids = {val.describe(i).id for i in range(10)}
    assert not val_ids & {train.describe(i).id for i in range(40)}
    reversed_ds = dataset.select(reversed(range(len(dataset))))
    _, val2 = train_val_split(reversed_ds, 10, seed=0)
    assert {val2.describe(i).id for i in range(10)} == val_ids
    _, val3 = train_val_split(dataset, 0.2, seed=1)
    assert len(val3) == 10 and {val3.describe(i).id for i in range(10)} != val_ids
    with pytest.raises(DataError, match="no training data"):
        train_val_split(dataset, 50)


def test_mixture_of_separate_files_merges_their_bad_reports(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    conv = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    for name, missing in (("ko.json", 1), ("en.json", 2)):
        recs = [{"id": f"{name}{i}", "image": "i.png", "conversations": conv} for i in range(8)]
        recs += [{"id": f"{name}-gone{i}", "image": "x.png", "conversations": conv} for i in range(missing)]
        (tmp_path / name).write_text(json.dumps(recs))
    parts = {n: load_conversations(tmp_path / f"{n}.json", max_bad_fraction=0.5) for n in ("ko", "en")}
    report = MixtureDataset(parts, {"ko": 1, "en": 1}).bad_report
    assert report.total == 19 and report.counts == {"missing_media": 3}
