"""The FSDP2 engine in one process against plain torch AdamW: accumulation, clipping, a frozen and an unused
parameter, full weights for saving, the portable state round trip and a plain model after `close`.
(2-process ZeRO-3 / FSDP2 equivalence and cross-resume: tests/test_scale_distributed.py.)"""

import copy
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tbi_train.config import resolve_config
from tbi_train.scale.sharded import FSDP2Engine, _repeated_blocks

os.environ.setdefault("OMP_NUM_THREADS", "1")


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + torch.tanh(self.fc(x)))  # [B, d]


class _Net(nn.Module):
    def __init__(self, d=6, vocab=11):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([_Block(d), _Block(d), nn.Identity()])
        self.unused = nn.Linear(d, 3)  # no gradient ever (as a tower's final norm)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied, as the tiny LM's head
        self.layers[0].fc.bias.requires_grad_(False)  # frozen inside a trained unit

    def forward(self, ids):
        x = self.embed(ids).mean(1)  # [B, d]
        for layer in self.layers:
            x = layer(x)
        return self.head(x)  # [B, vocab]


def _optimizer(net):
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in net.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1, "name": "all"}]
    groups.append({"params": rest, "weight_decay": 0.0, "name": "all/no_decay"})
    opt = torch.optim.AdamW(groups, lr=0.05)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))


def _batches(seed):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 11, (3, 5), generator=g), torch.randint(0, 11, (3,), generator=g)) for _ in range(2)
    ]


def test_repeated_blocks_are_the_outermost_module_list_elements_with_parameters():
    net = _Net()
    net.layers[1].inner = nn.ModuleList([nn.Linear(2, 2)])  # nested: stays inside its block's unit
    assert _repeated_blocks(net) == [net.layers[0], net.layers[1]]


def test_fsdp2_in_one_process_trains_like_torch_adamw(tmp_path):
    torch.manual_seed(0)
    net = _Net()
    reference = copy.deepcopy(net)
    ref_opt, ref_sched = _optimizer(reference)
    engine = FSDP2Engine(resolve_config("tiny", overrides=["precision=fp32"]))
    try:
        opt, sched = _optimizer(net)
        model = engine.prepare(net, opt, sched)
        assert all(p.numel() == 0 for p in net.parameters())  # the twin trains; no second full copy
        norms = []
        for step in range(3):
            micro = _batches(step)
            for k, (ids, labels) in enumerate(micro):
                with engine.micro_step(model, last=k == len(micro) - 1):
                    engine.backward(nn.functional.cross_entropy(model(ids), labels, reduction="sum") / 6)
                nn.functional.cross_entropy(reference(ids), labels, reduction="sum").div(6).backward()
            norms.append(engine.step([], max_norm=0.5))
            expected = nn.utils.clip_grad_norm_([p for p in reference.parameters() if p.requires_grad], 0.5)
            torch.testing.assert_close(norms[-1], expected.item(), rtol=1e-5, atol=1e-6)
            ref_opt.step()
            ref_sched.step()
            ref_opt.zero_grad(set_to_none=True)
        assert max(norms) > 0.5  # clipping was active

        with engine.saving(model):
            whole = dict(engine.unwrap_model(model).named_parameters())
            for name, p in reference.named_parameters():
                torch.testing.assert_close(whole[name].data, p.data, rtol=1e-5, atol=1e-6, msg=name)
        assert all(p.numel() == 0 for p in net.parameters())

        engine.save_state(str(tmp_path / "state"))
        moments = load_file(str(tmp_path / "state" / "optimizer_full.safetensors"))
        names = dict(reference.named_parameters())
        for p_ref, state in ref_opt.state.items():
            name = next(n for n, p in names.items() if p is p_ref)
            torch.testing.assert_close(moments[f"{name}/exp_avg_sq"], state["exp_avg_sq"], msg=name)
            assert moments[f"{name}/step"].item() == 3
        assert "unused.weight/exp_avg" not in moments and "layers.0.fc.bias/exp_avg" not in moments

        # The state loads into a fresh engine's shards (what a resumed phase does).
        again = FSDP2Engine(resolve_config("tiny", overrides=["precision=fp32"]))
        fresh = copy.deepcopy(reference)
        twin_opt, twin_sched = _optimizer(fresh)
        twin = again.prepare(fresh, twin_opt, twin_sched)
        again.load_state(tmp_path / "state", twin)
        loaded = {
            n: twin_opt.state[p]["exp_avg"].full_tensor()
            for n, p in twin.named_parameters()
            if p in twin_opt.state
        }
        assert loaded.keys() == {k.rsplit("/", 1)[0] for k in moments if k.endswith("/exp_avg")}
        for name, value in loaded.items():
            assert torch.equal(value, moments[f"{name}/exp_avg"])
        assert twin_sched.last_epoch == 3
        again.close()
    except BaseException:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        raise

    engine.close()
    assert not torch.distributed.is_initialized()
    for name, p in net.named_parameters():
        assert type(p.data) is torch.Tensor  # plain again, not a DTensor
        torch.testing.assert_close(
            p.data, dict(reference.named_parameters())[name].data, rtol=1e-5, atol=1e-6
        )
    assert net.head.weight is net.embed.weight


pytestmark = pytest.mark.usefixtures("one_thread")
