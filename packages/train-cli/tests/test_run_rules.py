"""Runner rules and helpers without training: skip / best-of rules, mix files, the progress view."""

import io
import json

import pytest
from rich.console import Console

from tbi_train.experiments import DataMix, ExperimentError, get_suite
from tbi_train.run import SuiteData, SuiteProgress
from tbi_train.run.runner import _best_of, _results, _skip_reason


def _done(overall, val_loss=None):
    result = {"status": "done", "aggregates": {"overall": overall}, "scores": {}}
    if val_loss is not None:
        result["val_loss"] = val_loss
    return result


def test_foveated_skip_rule_compares_validation_loss_lower_wins():
    rules = get_suite("foveated").rules
    done = {"F1": _done(0.1, 1.20), "F2": _done(0.9, 1.50)}
    assert _skip_reason(rules, "LR2", done) is None  # F3 not run yet
    # F1 has the lowest val loss: LR2-LR4 are skipped, although its Overall score is the worst
    reason = _skip_reason(rules, "LR2", {**done, "F3": _done(0.9, 1.35)})
    assert reason.startswith("F1 beat F2, F3 on val_loss (lowest wins: F1 1.2, F2 1.5, F3 1.35)")
    assert _skip_reason(rules, "LR4", {**done, "F3": _done(0.9, 1.35)}) == reason
    # F3 has a lower val loss than F1: nothing is skipped, although F1's Overall score is the best
    assert (
        _skip_reason(rules, "LR3", {"F1": _done(0.9, 1.2), "F2": _done(0.1, 1.5), "F3": _done(0.1, 1.1)})
        is None
    )
    assert (
        _skip_reason(rules, "LR2", {"F1": _done(0.9, 1.2), "F2": _done(0.1, 1.2), "F3": _done(0.1, 1.3)})
        is None
    )
    # results without a val loss (runs made before it was recorded) never make F1 win
    assert (
        _skip_reason(rules, "LR2", {"F1": _done(0.9), "F2": _done(0.1, 1.5), "F3": _done(0.1, 1.4)}) is None
    )
    assert (
        _skip_reason(rules, "A6", {"F1": _done(0.9, 0.1), "F2": _done(0.1, 2.0), "F3": _done(0.1, 2.0)})
        is None
    )


def test_skip_rule_reads_recorded_result_files(tmp_path):
    """The rule sees what runs record in result.json (`_results` reads the run folders)."""
    rules = get_suite("foveated").rules
    for exp_id, loss in (("F1", 2.0), ("F2", 1.9), ("F3", 2.1)):
        folder = tmp_path / "runs" / "foveated" / f"{exp_id}-seed42"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({**_done(0.5, loss), "id": exp_id}))
    assert _skip_reason(rules, "LR2", _results(tmp_path, "foveated", 42)) is None  # F2 is lower
    f2 = tmp_path / "runs" / "foveated" / "F2-seed42" / "result.json"
    f2.write_text(json.dumps({**_done(0.5, 2.05), "id": "F2"}))
    assert _skip_reason(rules, "LR2", _results(tmp_path, "foveated", 42)).startswith("F1 beat")


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
