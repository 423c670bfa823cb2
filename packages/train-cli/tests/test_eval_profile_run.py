"""tbi_train.eval.profile: memory measurement, budget search, criteria and the end-to-end profile (tiny)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tbi_train.config import ModelConfig, ProjectorSpec, VisionConfig
from tbi_train.errors import TrainError
from tbi_train.eval import profile as prof
from tbi_train.eval.profile import MaxResolution, peak_memory_bytes, profile_efficiency


def test_peak_memory_replays_allocations_in_order():
    def work():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(1_000_000)  # 8 MB live
        del a
        c = torch.empty(2_000_000)  # 4 + 8 = 12 MB live: the peak
        del b
        d = torch.ones(500_000)  # 8 + 2 MB
        return c, d

    assert peak_memory_bytes(work) == 12_000_000


def test_peak_memory_counts_scratch_freed_inside_an_op():
    x = torch.randn(256, 256)
    # the [256, 256] intermediate of x @ x is freed before the call returns; only the scalar is kept
    peak = peak_memory_bytes(lambda: (x @ x).sum())
    assert peak >= 256 * 256 * 4


def _fake_pipe(patch: int = 16):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    tower = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1, patch_size=patch
        )
    )
    return prof._Pipeline(tower, torch.nn.Identity(), torch.nn.Identity(), (-1,), prof.TowerVariant())


@pytest.mark.parametrize("budget", [5_000, 40_000, 160_000, 10**9, 10])
def test_budget_search_finds_the_largest_fitting_side(monkeypatch, budget):
    calls = []

    def total(pipe, side, text_length, device, seed):
        calls.append(side)
        return side * side  # a monotone memory model

    monkeypatch.setattr(prof, "_total_bytes", total)
    pipe = _fake_pipe()
    measured = {s: s * s for s in (64, 128, 256, 512)}
    found = prof._max_resolution(pipe, measured, budget, 8, torch.device("cpu"), 0, max_probes=8)
    fitting = [s for s in range(16, 513, 16) if s * s <= budget]
    if budget >= 512 * 512:
        assert found.kind == "at_least" and found.resolution == 512 and not calls
    else:
        assert found.kind == "exact"
        assert found.resolution == (max(fitting) if fitting else 0)
        assert all(s % 16 == 0 for s in calls) and len(calls) <= 8


def test_budget_search_out_of_probes_is_a_lower_bound(monkeypatch):
    monkeypatch.setattr(prof, "_total_bytes", lambda pipe, side, *a: side * side)
    found = prof._max_resolution(
        _fake_pipe(), {64: 64**2, 4096: 4096**2}, 1000**2, 8, torch.device("cpu"), 0, 2
    )
    assert found.kind == "at_least" and 64 <= found.resolution < 1000


@pytest.mark.parametrize(
    ("cand", "base", "status"),
    [
        (MaxResolution(512, "exact", 16), MaxResolution(256, "exact", 16), "met"),
        (MaxResolution(496, "exact", 16), MaxResolution(256, "exact", 16), "not met"),
        (MaxResolution(512, "at_least", 16), MaxResolution(256, "exact", 16), "met"),
        (MaxResolution(400, "at_least", 16), MaxResolution(256, "exact", 16), "undetermined"),
        (MaxResolution(400, "exact", 16), MaxResolution(256, "at_least", 16), "not met"),
        (MaxResolution(800, "exact", 16), MaxResolution(256, "at_least", 16), "undetermined"),
        (MaxResolution(800, "exact", 16), MaxResolution(0, "exact", 16), "undetermined"),
        (None, None, "undetermined"),
    ],
)
def test_resolution_criterion(cand, base, status):
    assert prof._resolution_criterion(cand, base, None).status == status


def test_resolution_criterion_flags_non_monotone_memory():
    bumpy = MaxResolution(512, "exact", 16, ((256, 90), (384, 120), (512, 95), (528, 130)))
    smooth = MaxResolution(256, "exact", 16, ((256, 90), (272, 101)))
    assert not bumpy.monotone(100) and smooth.monotone(100)
    criterion = prof._resolution_criterion(bumpy, smooth, 100)
    assert (
        criterion.status == "met" and "not monotone" in criterion.detail and "candidate" in criterion.detail
    )


def _tiny(projector: str = "mlp2x_gelu") -> ModelConfig:
    return ModelConfig(vision=VisionConfig(gradient_checkpointing=False), projector=ProjectorSpec(projector))


def _check_rows(rows, tol=0.05):
    for r in rows:
        for counted, formula in (
            (r.vision_flops, r.vision_flops_formula),
            (r.projector_flops, r.projector_flops_formula),
            (r.lm_prefill_flops, r.lm_prefill_flops_formula),
        ):
            assert abs(counted - formula) <= tol * formula
        assert r.peak_activation_bytes > 0 and r.vision_ms > 0 and r.lm_prefill_ms > 0


def test_profile_windowed_experiment_against_vanilla(tmp_path):
    # internvit-next/A2 on the tiny preset: 2D-RoPE + the core's windows (2x2 on tiny), 1 global layer of 4
    result = profile_efficiency(
        "internvit-next/A2", [256, 128], preset="tiny", repeats=1, text_length=8, memory_budget_gb=1.0
    )
    assert result.resolutions == (128, 256)
    assert "2x2 windows" in result.candidate and "vanilla" in result.baseline
    _check_rows(result.candidate_rows)
    _check_rows(result.baseline_rows)
    cand, base = result.candidate_rows, result.baseline_rows
    # windowed layers attend over 4 tokens instead of the whole grid: the saving grows with the grid
    assert cand[0].vision_flops < base[0].vision_flops and cand[1].vision_flops < base[1].vision_flops
    assert cand[1].vision_flops / base[1].vision_flops < cand[0].vision_flops / base[0].vision_flops
    assert [r.visual_tokens for r in cand] == [64, 256] == [r.visual_tokens for r in base]
    flops, resolution, tokens = result.criteria
    ratios = [c.vision_flops / b.vision_flops for c, b in zip(cand, base)]
    assert flops.status == ("met" if max(ratios) <= 0.70 else "not met")
    assert tokens.status == "not met"  # same projector: 100% of the baseline's tokens
    assert resolution.status == "undetermined"  # 1 GiB fits both at every profiled side
    assert result.candidate_max.kind == "at_least" and result.candidate_max.resolution == 256

    data = json.loads(json.dumps(result.to_dict()))
    assert data["criteria"][0]["status"] == flops.status
    assert data["candidate_rows"][1]["vision_flops"] == cand[1].vision_flops
    out = result.write_csv(tmp_path / "profile.csv")
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["pipeline"], int(r["resolution"])) for r in rows] == [
        ("candidate", 128),
        ("candidate", 256),
        ("baseline", 128),
        ("baseline", 256),
    ]
    assert int(rows[3]["vision_flops"]) == base[1].vision_flops
    assert not list(tmp_path.glob("*.tmp"))

    from rich.console import Console

    console = Console(record=True, width=250)
    console.print(result.table())
    console.print(result.criteria_table())
    text = console.export_text()
    assert "candidate" in text and "baseline" in text and "not met" in text


def test_profile_tokens_and_budget_against_an_explicit_baseline():
    # pixel unshuffle (4x fewer tokens) against mlp2x_gelu, both behind the vanilla tiny tower
    first = profile_efficiency(
        _tiny("pixel-shuffle-mlp"), [64, 128], baseline=_tiny(), repeats=1, text_length=4
    )
    cand, base = first.candidate_rows, first.baseline_rows
    assert [r.visual_tokens for r in cand] == [4, 16] and [r.visual_tokens for r in base] == [16, 64]
    assert first.criteria[2].status == "met"  # 25% of the baseline's tokens
    assert first.criteria[0].status == "not met"  # the same vanilla tower: 100% of its FLOPs
    _check_rows(cand)
    # a budget between the two sides' measured totals: the search must land between them, exactly
    totals = [first.candidate_weight_bytes + r.peak_activation_bytes for r in cand]
    assert totals[0] < totals[1]
    budget_gb = (totals[0] + totals[1]) / 2 / 2**30
    second = profile_efficiency(
        _tiny("pixel-shuffle-mlp"), [64, 128], baseline=_tiny(), repeats=1, text_length=4,
        memory_budget_gb=budget_gb,
    )  # fmt: skip
    found = second.candidate_max
    assert found.kind == "exact" and 64 <= found.resolution < 128
    budget = second.memory_budget_bytes
    assert all(b <= budget for s, b in found.probes if s <= found.resolution)
    assert any(s == found.resolution + 16 and b > budget for s, b in found.probes)
    assert second.to_dict()["candidate_max"]["monotone"] == found.monotone(budget)


def test_profile_rejects_bad_input(tmp_path):
    with pytest.raises(TrainError, match="patch size 16"):
        profile_efficiency(_tiny(), [100], repeats=1)
    with pytest.raises(TrainError, match="memory-budget"):
        profile_efficiency(_tiny(), [64], memory_budget_gb=0)
    with pytest.raises(TrainError, match="resolutions"):
        profile_efficiency(_tiny(), [])
    with pytest.raises(TrainError, match=r"no config\.json"):
        profile_efficiency(tmp_path, [64])


def test_vanilla_of_keeps_projector_and_lm_and_drops_windows():
    pipe = prof._from_config(_tiny(), 0, (), (True, True), 2, 1)
    assert pipe.variant == prof.TowerVariant(True, 2, (3,))
    assert pipe.tower.tbi_vision_rope.window == 2
    vanilla = prof._vanilla_of(pipe)
    assert getattr(vanilla.tower, "tbi_vision_rope", None) is None
    assert vanilla.projector is pipe.projector and vanilla.lm is pipe.lm
    assert dataclasses.replace(vanilla.variant) == prof.TowerVariant()


def test_profile_saved_model_merges_adapters(tmp_path):
    from tbi_train.config import get_preset
    from tbi_train.model import build_vlm, save_vlm

    torch.manual_seed(0)
    cfg = get_preset("tiny").model  # LM LoRA attached (rank 8)
    vlm = build_vlm(cfg, cache_dir=tmp_path / "run", corpus=["빨간색 원입니다. A red circle."])
    folder = save_vlm(vlm, tmp_path / "model")
    result = profile_efficiency(folder, [64], repeats=1, text_length=4)
    assert result.target == str(folder)
    row = result.candidate_rows[0]
    # the adapters are folded into the weights: no LoRA matmuls beyond the formula's
    assert row.lm_prefill_flops == row.lm_prefill_flops_formula
    assert row.visual_tokens == vlm.tokens_per_image == 16


def test_readme_efficiency_example_runs():
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Efficiency profile", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md#efficiency-profile", "exec"), namespace)
    result = namespace["result"]
    assert result.target == "internvit-next/A2" and len(result.candidate_rows) == 2
