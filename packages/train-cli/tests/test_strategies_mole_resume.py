"""MoLE step mid-step resume: a run stopped after k steps and resumed ends bitwise equal to an uninterrupted one."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tbi_train.config import get_preset
from tbi_train.errors import TrainError
from tbi_train.model import build_vlm, load_vlm, save_vlm
from tbi_train.strategies import train_mole

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PHASE = {"steps": 5, "epochs": None, "batch_size": 2, "grad_accum": 1, "warmup_steps": 1, "lr": {"lm": 1e-2}}
SPEC = {"layers": (2, 3), "router_hidden_dim": 8, "router_temperature": 1.0, "capacity_factor": 1.25,
        "load_balancing_loss_weight": 0.01, "phase": PHASE}  # fmt: skip


class _Kill(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Three saved tiny VLMs (the expert sources) and a small training set."""
    from tbi_train.data import load_conversations
    from tbi_train.synth import generate_synthetic

    root = tmp_path_factory.mktemp("mole")
    torch.manual_seed(0)
    base = build_vlm(get_preset("tiny").model, cache_dir=root, corpus=["what colour 무슨 색"])
    save_vlm(base, root / "base")
    for name, scale in (("en", 0.01), ("ko", 0.02)):
        vlm = load_vlm(root / "base")
        with torch.no_grad():
            for pname, p in vlm.lm.named_parameters():
                if "layers" in pname:
                    p.add_(scale * torch.randn_like(p))
        save_vlm(vlm, root / name)
    data = generate_synthetic(root / "data", n=16, seed=1, image_size=96, task_weights={"color": 1.0})
    experts = {"ko": root / "ko", "en": root / "base", "shared": root / "en"}
    return experts, load_conversations(data / "train.json"), get_preset("tiny").optim


def _run(setup, out, **kwargs):
    experts, dataset, optim = setup
    return train_mole(experts, SPEC, dataset, out, seed=3, max_length=256, optim=optim, **kwargs)


def _mole_steps(log):
    return [r["step"] for r in map(json.loads, log.read_text().splitlines()) if r.get("phase") == "mole"]


@pytest.mark.slow
def test_killed_and_resumed_mole_step_is_bitwise_equal(setup, tmp_path):
    straight = load_file(str(_run(setup, tmp_path / "a" / "model") / "model.safetensors"))

    ckpts, log = tmp_path / "b" / "ckpt", tmp_path / "b" / "log.jsonl"

    def kill_after_3(record):
        if record["step"] == 3:
            raise _Kill

    with pytest.raises(_Kill):
        _run(setup, tmp_path / "b" / "model", log_path=log, checkpoint_dir=ckpts, checkpoint_every=2,
             on_step=kill_after_3)  # fmt: skip
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002"]
    assert (ckpts / "step-00000002" / "COMPLETE").is_file() and _mole_steps(log) == [1, 2, 3]
    # a half-written later checkpoint (no marker) is never read
    (ckpts / "step-00000004").mkdir()
    (ckpts / "step-00000004" / "mole.safetensors").write_bytes(b"partial")

    seen = []
    out = _run(setup, tmp_path / "b" / "model", log_path=log, checkpoint_dir=ckpts, checkpoint_every=2,
               on_step=lambda r: seen.append(r["step"]))  # fmt: skip
    assert seen == [3, 4, 5]  # resumed after step 2, not from scratch
    assert _mole_steps(log) == [1, 2, 3, 4, 5]  # the log's step 3 from the killed run was replaced
    assert not ckpts.exists()  # removed once the model is written
    resumed = load_file(str(out / "model.safetensors"))
    assert resumed.keys() == straight.keys()
    differing = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert differing == []
    # and training moved the Korean experts away from the Korean model they were copied from
    ko = load_file(str(setup[0]["ko"] / "model.safetensors"))
    experts = [k for k in straight if ".mlp.experts.ko." in k]
    assert experts and any(
        not torch.equal(straight[k], ko[k.replace(".mlp.experts.ko.", ".mlp.")]) for k in experts
    )


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(setup, tmp_path):
    ckpts = tmp_path / "ckpt"

    def kill_after_2(record):
        if record["step"] == 2:
            raise _Kill

    with pytest.raises(_Kill):
        _run(setup, tmp_path / "model", checkpoint_dir=ckpts, checkpoint_every=2, on_step=kill_after_2)
    from safetensors.torch import save_file

    weights = load_file(str(ckpts / "step-00000002" / "mole.safetensors"))
    weights.pop(next(iter(weights)))
    save_file(weights, str(ckpts / "step-00000002" / "mole.safetensors"))
    with pytest.raises(TrainError, match="do not match this model"):
        _run(setup, tmp_path / "model", checkpoint_dir=ckpts, checkpoint_every=2)
