"""Runner rules and helpers without training: skip / best-of rules, mix files, the progress view."""

import io
import json

import pytest
from rich.console import Console

from tbi_train.experiments import DataMix, ExperimentError, get_suite
from tbi_train.run import SuiteData, SuiteProgress
from tbi_train.run.runner import _best_of, _skip_reason


def _done(overall):
    return {"status": "done", "aggregates": {"overall": overall}, "scores": {}}


def test_foveated_skip_rule_applies_only_when_f1_wins():
    rules = get_suite("foveated").rules
    assert _skip_reason(rules, "LR2", {"F1": _done(0.5), "F2": _done(0.4)}) is None  # F3 not run yet
    assert _skip_reason(rules, "LR2", {"F1": _done(0.5), "F2": _done(0.4), "F3": _done(0.45)}).startswith(
        "F1 beat"
    )
    assert _skip_reason(rules, "LR2", {"F1": _done(0.5), "F2": _done(0.4), "F3": _done(0.55)}) is None
    assert _skip_reason(rules, "A6", {"F1": _done(0.9), "F2": _done(0.1), "F3": _done(0.1)}) is None


def test_best_of_rule_picks_the_winning_spatial_features():
    suite = get_suite("internvit-next")
    a4 = suite.experiment("A4")
    assert _best_of(suite.rules, a4, {"A3a": _done(0.3)}) is a4  # not all candidates done
    chosen = _best_of(suite.rules, a4, {"A3a": _done(0.6), "A3b": _done(0.3), "A3c": _done(0.5)})
    assert chosen.id == "A4" and chosen.vision.multi_scale == () and chosen.projector.name == "spatial-tokens"
    chosen = _best_of(
        suite.rules, suite.experiment("A5"), {"A3a": _done(0.1), "A3b": _done(0.7), "A3c": _done(0.5)}
    )
    assert chosen.projector.name == "adaptive-compression" and chosen.decoder.kind == "ft_merge_mole"


def test_mix_files_follow_the_shares(tmp_path):
    records = [{"id": str(i), "language": "ko" if i % 4 == 0 else "en", "task": "ocr" if i % 3 else "caption",
                "image": "x.png"} for i in range(120)]  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(records))
    data = SuiteData(tmp_path, tmp_path / "train.json", tmp_path / "val.json", None)
    path = data.mix_file(DataMix(languages=(("ko", 0.5), ("en", 0.5))))
    mixed = json.loads(path.read_text())
    langs = [r["language"] for r in mixed]
    assert langs.count("ko") == langs.count("en") == 30  # all 30 Korean, as many English
    assert data.mix_file(DataMix(languages=(("ko", 0.5), ("en", 0.5)))) == path  # made once
    only_ko = json.loads(data.mix_file(DataMix(languages=(("ko", 1.0),), tasks=("ocr",))).read_text())
    assert {(r["language"], r["task"]) for r in only_ko} == {("ko", "ocr")}
    assert data.mix_file(DataMix()) == tmp_path / "train.json"
    with pytest.raises(ExperimentError, match="modality"):
        data.mix_file(DataMix(modalities=(("video", 0.5), ("image", 0.5))))


def test_progress_view_counts_and_eta():
    view = SuiteProgress(Console(file=io.StringIO()))
    view("start", {"suite": "tbi-mllm", "total": 4})
    view("running", {"id": "A1", "seed": 42})
    assert view.eta_seconds() is None
    view("done", {"id": "A1", "seed": 42, "seconds": 10.0})
    view("failed", {"id": "B1", "seed": 42, "error": "x"})
    assert view.counts == {"done": 1, "failed": 1, "skipped": 0}
    assert view.eta_seconds() == pytest.approx(20.0)
