"""The five suites as data: every row resolves, shared steps share keys, rank budgets, plans and views."""

import os

import pytest
from rich.console import Console

from tbi_train.experiments import (
    ExperimentError,
    allocate_ranks,
    find_experiment,
    get_suite,
    list_experiments,
    list_suites,
    lora_costs,
    plan_suite,
    resolve_experiment,
    resolve_suite,
    show_experiment,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REQUESTED = {"model.vision.rope_2d", "model.vision.window_attention", "model.vision.feature_layers",
             "model.lm.pyramid_drop", "model.projector.query_from_lm", "data.replicate_image_frames"}  # fmt: skip


def _render(table) -> str:
    console = Console(width=250, record=True)
    console.print(table)
    return console.export_text()


def test_suites_hold_every_row_of_the_seeds():
    counts = {name: [e.id for e in get_suite(name).experiments] for name in list_suites()}
    assert counts["tbi-mllm"] == ["A0", "A1", "B1", "B2", "B3", "C1", "C2", "D1", "D2", "D3", "D4", "E1", "E2",
                                  "F1", "F2", "F3", "F4"]  # fmt: skip
    assert counts["internvit-next"] == ["A0", "A1", "A2", "A3a", "A3b", "A3c", "A4", "A5"]
    assert len(counts["cmba"]) == 6
    assert set(counts["foveated"]) == {
        "F1",
        "F2",
        "F3",
        "LR1",
        "LR2",
        "LR3",
        "LR4",
        "A1",
        "A6",
        "B1",
        "A8a",
        "A8b",
        "D1",
    }
    assert counts["ko-video-caption"] == [f"E{i}" for i in range(1, 9)]


@pytest.mark.parametrize(
    "suite",
    [
        "tbi-mllm",
        "internvit-next",
        pytest.param("cmba", marks=pytest.mark.slow),
        "foveated",
        "ko-video-caption",
    ],
)
def test_every_experiment_resolves_on_tiny(suite):
    for resolved in resolve_suite(suite, preset="tiny"):
        assert resolved.steps, resolved.id
        assert {p.split("=")[0] for p in resolved.pending} <= REQUESTED
        for step in resolved.steps:
            if step.kind == "train" and step.name != "init":
                assert step.config.phases[-1].name == step.name
        assert len({s.key for s in resolved.steps}) == len(resolved.steps)


def test_every_row_of_every_suite_maps_onto_core_config_fields():
    pending = {
        (suite, r.id): r.pending for suite in list_suites() for r in resolve_suite(suite, preset="tiny")
    }
    assert len(pending) > 40
    assert not {k: v for k, v in pending.items() if v}


def test_shared_steps_share_keys_and_seeds_do_not():
    a1, d1, d3, d4 = (resolve_experiment(e, preset="tiny") for e in ("A1", "D1", "D3", "D4"))
    assert [s.key for s in a1.steps[:2]] == [s.key for s in d4.steps[:2]] == [s.key for s in d1.steps[:2]]
    assert a1.steps[2].key != d1.steps[2].key  # full FT vs LoRA
    assert [s.key for s in d3.steps] == [s.key for s in d4.steps[:5]]  # D3 = D4 up to the merge
    assert d4.steps[-1].kind == "mole" and dict(d4.steps[-1].inputs)["shared"] == d3.steps[-1].key
    other_seed = resolve_experiment("A1", preset="tiny", seed=123)
    assert not {s.key for s in other_seed.steps} & {s.key for s in a1.steps}
    f3, lr1 = (
        resolve_experiment("foveated/F3", preset="tiny"),
        resolve_experiment("foveated/LR1", preset="tiny"),
    )
    assert [s.key for s in f3.steps] == [s.key for s in lr1.steps]


def test_tiny_learning_rates_keep_the_seed_ratios():
    a1 = resolve_experiment("A1", preset="tiny").config
    d1 = resolve_experiment("D1", preset="tiny").config
    # seed 000: full model 1e-5 vs LoRA 2e-4 in phase 3, kept as a ratio of 1:20 on the tiny preset
    assert a1.phases[2].lr.lm / d1.phases[2].lr.lm_lora == pytest.approx(1e-5 / 2e-4)
    assert d1.phases[2].lr.lm_lora == pytest.approx(3e-3)  # the tiny preset's own rate anchors the scale


def test_mole_layers_scale_to_depth():
    d4 = resolve_experiment("D4", preset="tiny")
    assert dict(d4.steps[-1].spec)["layers"] == (2, 3)  # 16/20/24/28 of 32 on a 4-layer LM
    from tbi_train.experiments import MoleSpec

    assert MoleSpec().scaled_layers(32) == (16, 20, 24, 28)


def test_rank_allocation_meets_the_budget():
    import random

    rng = random.Random(0)
    for _ in range(50):
        costs = {c: rng.randint(100, 100_000) for c in ("vision", "projector", "lm")}
        ratio = tuple(rng.choice([1, 2, 3, 4]) for _ in range(3))
        budget = 8 * sum(costs.values())
        alloc = allocate_ranks(ratio, costs, budget)
        # rounding each rank moves the total by at most half a rank of each component
        assert abs(alloc.total - budget) <= 0.5 * sum(costs.values()) + max(costs.values())
        assert alloc.params == {c: alloc.ranks[c] * costs[c] for c in costs}
    uniform = allocate_ranks((1, 1, 1), {"vision": 3, "projector": 5, "lm": 7}, 8 * 15)
    assert uniform.ranks == {"vision": 8, "projector": 8, "lm": 8} and uniform.deviation == 0
    with pytest.raises(ExperimentError, match="positive"):
        allocate_ranks((1, 0, 1), {"vision": 1, "projector": 1, "lm": 1}, 10)


def test_lora_costs_match_the_adapters_peft_builds(tmp_path):
    """Independent check: count the lora_A/lora_B parameters of a built tiny VLM at rank r."""
    from tbi_train.config import apply_overrides, get_preset
    from tbi_train.model import build_vlm

    cfg = apply_overrides(get_preset("tiny"), [f"model.peft.{c}.enabled=true" for c in ("vision", "projector", "lm")]
                          + [f"model.peft.{c}.r=3" for c in ("vision", "projector", "lm")])  # fmt: skip
    costs = lora_costs(cfg)
    vlm = build_vlm(cfg.model, cache_dir=tmp_path, corpus=["hello 안녕"])
    for comp, module in vlm.component_modules().items():
        n = sum(p.numel() for name, p in module.named_parameters() if "lora_" in name)
        assert n == 3 * costs[comp], comp


def test_cmba_ranks_reported_in_notes():
    resolved = resolve_experiment("cmba/P141", preset="tiny")
    note = resolved.notes[0]
    assert note.startswith("ranks ") and "budget" in note
    ranks = resolved.config.model.peft
    assert ranks.projector.r > ranks.vision.r and ranks.projector.r > ranks.lm.r


@pytest.mark.slow
def test_views_and_errors():
    text = _render(list_experiments("tbi-mllm"))
    assert "FT→Merge→MoLE" in text and "Pyramid projector" in text
    shown = show_experiment("D3", preset="tiny")
    assert "shared with" in shown and "tbi-mllm/D4" in shown and '"name": "D3"' in shown
    plan = _render(plan_suite("tbi-mllm", preset="tiny", seeds=[42]))
    assert "← A1" in plan and "D4-seed42" in plan and "with checkpoint reuse" in plan
    assert find_experiment("cmba/U111")[1].id == "U111"
    assert find_experiment("E1")[0].name == "tbi-mllm"  # a bare id means tbi-mllm's row first
    assert find_experiment("E3")[0].name == "ko-video-caption"
    assert find_experiment("a3a")[0].name == "internvit-next"
    with pytest.raises(ExperimentError, match="no experiment"):
        get_suite("tbi-mllm").experiment("Z9")
    with pytest.raises(ExperimentError, match="Did you mean"):
        get_suite("tbi-mlm")


@pytest.mark.parametrize("suite", ["tbi-mllm", "internvit-next", "cmba", "foveated", "ko-video-caption"])
def test_every_experiment_resolves_on_the_seed_preset(suite):
    """Real presets resolve without their checkpoints (nothing is loaded); seed 000 phases at full scale."""
    for resolved in resolve_suite(suite):
        assert resolved.preset == get_suite(suite).preset
        for step in resolved.steps:
            if step.kind == "train" and step.name == "projector_pretrain":
                assert step.config.phases[0].steps == 10_000 and step.config.phases[0].lr.projector == 1e-3
    f4 = resolve_experiment("F4")
    assert dict(f4.steps[-1].spec)["layers"] == (16, 20, 24, 28)  # seed 000 mole_config on a 32-layer LM
    cmba = resolve_experiment("cmba/B241")
    assert (
        cmba.config.model.peft.vision.r,
        cmba.config.model.peft.projector.r,
        cmba.config.model.peft.lm.r,
    ) == (8, 16, 4)
