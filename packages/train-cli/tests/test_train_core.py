"""Training building blocks: data order, loss, accumulation, optimizer groups, schedule, checkpoint discovery."""

import math

import pytest
import torch

from tbi_train.config import ComponentLR, OptimConfig, PhaseConfig
from tbi_train.train import (
    CheckpointState,
    DataOrder,
    build_optimizer,
    build_scheduler,
    latest_checkpoint,
    set_trainable,
    token_loss_sum,
)
from tbi_train.train.checkpoint import prune_checkpoints


@pytest.mark.parametrize(("n", "batch", "world"), [(10, 3, 1), (7, 2, 2), (5, 5, 1), (1, 4, 1)])
def test_data_order_covers_each_epoch_once_and_is_pure(n, batch, world):
    orders = [DataOrder(n, batch, seed=3, world_size=world, rank=r) for r in range(world)]
    stream = [i for k in range(3 * n) for o in orders for i in o.indices(k)]
    per_step = batch * world
    for epoch in range(2):
        # the stream is a concatenation of permutations of range(n)
        chunk = stream[epoch * n : (epoch + 1) * n]
        assert sorted(chunk) == list(range(n))
    fresh = DataOrder(n, batch, seed=3, world_size=world, rank=0)
    assert fresh.indices(5) == orders[0].indices(5)  # no hidden state: resuming at k reads the same batch
    assert len(stream) == 3 * n * per_step
    assert DataOrder(n, batch, seed=4).indices(0) != DataOrder(n, batch, seed=3).indices(0) or n == 1


def test_token_loss_sum_matches_a_float64_loop():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[0, :4] = -100
    labels[2, 5:] = -100
    expected = 0.0
    for b in range(3):
        for t in range(6):
            target = int(labels[b, t + 1])
            if target != -100:
                expected -= torch.log_softmax(logits[b, t].double(), dim=-1)[target].item()
    assert token_loss_sum(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_token_normalised_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(13, 8)
    head = torch.nn.Linear(8, 13)
    ids = torch.randint(0, 13, (4, 6))
    labels = ids.clone()
    labels[0, :3] = -100
    labels[3, :5] = -100

    def grads(parts):
        emb.zero_grad()
        head.zero_grad()
        total = sum(int((labels[p][:, 1:] != -100).sum()) for p in parts)
        for p in parts:
            (token_loss_sum(head(emb(ids[p])), labels[p]) / total).backward()
        return [t.grad.clone() for t in (emb.weight, head.weight, head.bias)]

    one = grads([slice(0, 4)])
    two = grads([slice(0, 2), slice(2, 4)])
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b)


def test_schedule_follows_warmup_then_cosine_to_the_floor():
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [param], "lr": 0.5, "name": "projector"}])
    phase = PhaseConfig(steps=10, warmup_steps=3, lr=ComponentLR(projector=0.5))
    sched = build_scheduler(opt, 10, phase, OptimConfig(min_lr_ratio=0.1))
    seen = []
    for _ in range(11):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for s, lr in enumerate(seen):
        if s < 3:
            expected = 0.5 * s / 3
        else:
            expected = 0.5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 3) / 7)))
        assert lr == pytest.approx(expected, abs=1e-9)
    assert seen[-1] == pytest.approx(0.05)


def test_optimizer_groups_rates_decay_and_freezing():
    vision = [
        ("vision.w", torch.nn.Parameter(torch.ones(3, 3))),
        ("vision.b", torch.nn.Parameter(torch.ones(3))),
    ]
    lora = [("lm.lora_A", torch.nn.Parameter(torch.ones(2, 3)))]
    lm = [("lm.w", torch.nn.Parameter(torch.ones(4, 4)))]
    groups = {"vision": vision, "lm_lora": lora, "lm": lm}
    phase = PhaseConfig(trainable=("vision", "lm_lora"), lr=ComponentLR(vision=1e-5, lm_lora=2e-4), steps=1)
    n = set_trainable(groups, phase)
    assert n == 9 + 3 + 6
    assert [p.requires_grad for _, p in vision + lora + lm] == [True, True, True, False]
    opt = build_optimizer(groups, phase, OptimConfig())
    summary = [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    assert summary == [
        ("vision", 1e-5, 0.05, 1),
        ("vision/no_decay", 1e-5, 0.0, 1),
        ("lm_lora", 2e-4, 0.05, 1),
    ]
    assert opt.defaults["betas"] == (0.9, 0.95)


def _fake_checkpoint(root, state, complete=True):
    folder = root / "checkpoints" / state.folder_name
    folder.mkdir(parents=True)
    import json
    from dataclasses import asdict

    (folder / "trainer.json").write_text(json.dumps(asdict(state)))
    if complete:
        (folder / "COMPLETE").write_text("")
    return folder


def test_latest_checkpoint_trusts_only_complete_folders(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    _fake_checkpoint(tmp_path, CheckpointState(0, "a", 5, True))
    _fake_checkpoint(tmp_path, CheckpointState(1, "b", 2, False))
    _fake_checkpoint(tmp_path, CheckpointState(1, "b", 4, False))
    _fake_checkpoint(tmp_path, CheckpointState(1, "b", 6, False), complete=False)  # killed while writing
    (tmp_path / "checkpoints" / ".tmp-01-b-step0000008").mkdir()
    state, path = latest_checkpoint(tmp_path)
    assert (state.phase_index, state.step, state.phase_done) == (
        1,
        4,
        False,
    ) and path.name == state.folder_name
    prune_checkpoints(tmp_path, 1, keep_last=1)
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "01-b-step0000002" not in left and "01-b-step0000004" in left and "00-a-step0000005-end" in left


class _FakeDataset:
    """Just what the phase data filter reads: describe(i).task and select(indices)."""

    def __init__(self, tasks):
        self.tasks = tasks

    def __len__(self):
        return len(self.tasks)

    def describe(self, i):
        return type("Info", (), {"task": self.tasks[i]})

    def select(self, indices):
        return _FakeDataset([self.tasks[i] for i in indices])


def test_phase_task_filter_and_epoch_step_count():
    from tbi_train.errors import TrainError
    from tbi_train.train.run import _phase_dataset, _total_steps

    data = _FakeDataset(["caption", "ocr", "caption", "color"])
    phase = PhaseConfig(tasks=("caption", "color"), steps=1)
    assert _phase_dataset(data, phase, 0).tasks == ["caption", "caption", "color"]
    assert _phase_dataset(data, PhaseConfig(steps=1), 0) is data
    with pytest.raises(TrainError, match=r"phases.2.tasks=\['chart'\] matches no training sample"):
        _phase_dataset(data, PhaseConfig(tasks=("chart",), steps=1), 2)
    # ceil(epochs * n / (batch * accum * world))
    assert _total_steps(PhaseConfig(epochs=1.5, batch_size=4, grad_accum=2), 100, 1) == 19
    assert _total_steps(PhaseConfig(epochs=1.0, batch_size=4, grad_accum=2), 100, 2) == 7
    assert _total_steps(PhaseConfig(steps=5), 100, 2) == 5
