"""Streaming merge of whole checkpoints: plan (validate everything first), merge tensor by tensor into a
temporary directory, then rename it into place. A failure leaves nothing behind."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tbi_merging.checkpoint import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    DTYPES,
    INDEX_NAME,
    Checkpoint,
    ShardWriter,
    is_adapter,
    is_float_code,
)
from tbi_merging.config import ComponentRule, MergeConfig
from tbi_merging.core import TensorStats, merge_tensors, resolve_density, resolve_normalize
from tbi_merging.errors import MergeError

if TYPE_CHECKING:
    import torch

    from tbi_merging.lora import LoraAdapter

    Source = Checkpoint | LoraAdapter  # a model to merge: a full checkpoint or a LoRA adapter

# Adapters, vocabulary alignment and the linear method need torch; merging full checkpoints does not, so
# their modules are imported where they are used and `python -m tbi_merging` starts without torch.

log = logging.getLogger(__name__)

_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5")


@dataclass(frozen=True)
class _Item:
    """One output tensor: how it is produced, and its planned dtype/shape/shard."""

    name: str
    action: str  # merge | base | take | align
    code: str  # safetensors dtype code of the output tensor
    shape: tuple[int, ...]
    shard: str
    source: str | None = None  # model name for ``take``; None = the base
    rule: ComponentRule | None = None


def merge_checkpoints(config: MergeConfig, on_tensor: Callable[[str, int, int], None] | None = None) -> Path:
    """Merge ``config.models`` into ``config.base`` and write ``config.out`` (a Hugging Face checkpoint
    sharded like the base, or one LoRA adapter when ``config.adapter_rank`` is set).

    Args:
        config: the merge (see :class:`MergeConfig`).
        on_tensor: called as ``on_tensor(name, i, total)`` after each output tensor (progress bars).

    Returns:
        The output directory. ``config.report_name`` inside it records what happened to every tensor.

    Raises:
        MergeError: any bad input, naming the file and tensor; nothing is left at ``config.out``.
    """
    out = config.out
    if out.exists() and not config.overwrite:
        raise MergeError(
            f"output {out} already exists; pass --overwrite to replace it or choose another --out"
        )
    started = time.perf_counter()
    base = Checkpoint(config.base, "the base")
    sources: dict[str, Source] = {}
    try:
        for m in config.models:
            label = f"model {m.name!r}"
            if is_adapter(m.path):
                from tbi_merging.lora import LoraAdapter

                sources[m.name] = LoraAdapter(m.path, label, base)
            else:
                sources[m.name] = Checkpoint(m.path, label)
        adapters = all(not isinstance(s, Checkpoint) for s in sources.values())
        if config.adapter_rank is not None and not adapters:
            raise MergeError("--to-adapter needs every --model to be a LoRA adapter directory")
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
            if config.adapter_rank is not None:
                report = _write_adapter(config, sources, tmp, on_tensor)
            else:
                report = _write_checkpoint(config, base, sources, tmp, on_tensor)
            report["seconds"] = round(time.perf_counter() - started, 3)
            (tmp / config.report_name).write_text(json.dumps(report, indent=1))
            _commit(tmp, out, config.overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        base.close()
        for s in sources.values():
            s.close()
    log.info("merged %d models into %s", len(config.models), out)
    return out


def _commit(tmp: Path, out: Path, overwrite: bool) -> None:
    if not out.exists():
        tmp.rename(out)
        return
    if not overwrite:
        raise MergeError(f"output {out} appeared during the merge; pass --overwrite or choose another --out")
    trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(trash)
    tmp.rename(out)
    if trash.is_dir():
        shutil.rmtree(trash)
    else:
        trash.unlink()


def _plan(config: MergeConfig, base: Checkpoint, sources: dict[str, Source], vocab_shape) -> list[_Item]:
    """Decide every output tensor before writing anything, so bad inputs fail before any IO."""
    items = []
    for shard in base.shards:
        for name in base.shard_tensors[shard]:
            info = base.info(name)
            rule = config.rule_for(name)
            if name in vocab_shape:
                items.append(_Item(name, "align", info.code, vocab_shape[name], shard, rule=rule))
                continue
            problem = None
            for mname, src in sources.items():
                if isinstance(src, Checkpoint):
                    if name not in src.infos:
                        problem = (
                            mname,
                            f"tensor {name!r} is in the base ({info.file}) but not in model "
                            f"{mname!r} ({src.path})",
                        )
                        break
                    other = src.info(name)
                    if other.shape != info.shape:
                        problem = (
                            mname,
                            f"tensor {name!r} has shape {other.shape} in model {mname!r} "
                            f"({other.file}) but {info.shape} in the base ({info.file})",
                        )
                        break
                    if other.code != info.code and not config.allow_dtype_mismatch:
                        raise MergeError(
                            f"tensor {name!r} is {DTYPES[other.code][0]} in model {mname!r} ({other.file}) but {DTYPES[info.code][0]} "
                            f"in the base ({info.file}); convert the checkpoint or pass --allow-dtype-mismatch "
                            "(merged in float32, written in the base dtype)"
                        )
            if problem is not None:
                if config.unshared != "take":
                    raise MergeError(
                        f"{problem[1]}; pass --unshared take --take-from {problem[0]} to copy it from one model"
                        + (", or --align-vocab MODEL for vocabulary tensors" if "shape" in problem[1] else "")
                    )
                src = sources[config.take_from]
                if isinstance(src, Checkpoint) and name in src.infos:
                    other = src.info(name)
                    items.append(_Item(name, "take", other.code, other.shape, shard, config.take_from, rule))
                else:
                    items.append(_Item(name, "base", info.code, info.shape, shard, rule=rule))
            elif not is_float_code(info.code) or (rule is not None and rule.method == "base"):
                items.append(_Item(name, "base", info.code, info.shape, shard, rule=rule))
            else:
                items.append(_Item(name, "merge", info.code, info.shape, shard, rule=rule))
    base_names = set(base.infos)
    for mname, src in sources.items():
        extra = [n for n in src.names() if n not in base_names]
        if not extra:
            continue
        if config.unshared != "take":
            raise MergeError(
                f"tensor {extra[0]!r} is in model {mname!r} ({src.info(extra[0]).file}) but not in the base "
                f"({len(extra)} such tensors); pass --unshared take --take-from {mname} to include them"
            )
        if mname != config.take_from:
            continue
        for n in extra:
            other = src.info(n)
            items.append(_Item(n, "take", other.code, other.shape, base.shards[-1], mname))
    return items


def _options(config: MergeConfig, item: _Item) -> dict:
    rule = item.rule
    method = rule.method if rule is not None and rule.method not in (None, "base") else config.method
    weights = {m.name: m.weight for m in config.models}
    if rule is not None and rule.weights:
        weights.update(rule.weights)
    return {
        "method": method,
        "weights": weights,
        "density": rule.density if rule is not None and rule.density is not None else config.density,
        "drop_rate": rule.drop_rate if rule is not None and rule.drop_rate is not None else config.drop_rate,
        "rescale": config.rescale,
        "sign": config.sign,
        "normalize": config.normalize,
        "scale": config.scale,
        "compat": config.compat,
        "seed": config.seed,
        "check_finite": config.check_finite,
        "threads": config.threads if config.threads is not None else _default_threads(),
    }


def _default_threads() -> int:
    """OMP_NUM_THREADS when set (as torch would use), else the cores this process may run on."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return int(os.environ.get("OMP_NUM_THREADS") or 0) or len(usable)


class _VocabAligner:
    """Aligns the rows of vocabulary tensors by token string (see :mod:`tbi_merging.vocab`)."""

    def __init__(self, config: MergeConfig, base: Checkpoint, sources: dict[str, Source]):
        self.target_name = config.align_vocab
        target_src = sources[self.target_name]
        if not isinstance(target_src, Checkpoint):
            raise MergeError("--align-vocab needs full checkpoints (adapters do not change the vocabulary)")
        from tbi_merging.vocab import load_vocab

        self.target = target_src
        self.vocab = load_vocab(target_src.path, f"model {self.target_name!r}")
        self.vocabs = {"": load_vocab(base.path, "the base")}
        for name, src in sources.items():
            self.vocabs[name] = load_vocab(src.path, f"model {name!r}")
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name in base.names():
            if not any(fnmatch.fnmatchcase(name, p) for p in config.vocab_patterns):
                continue
            if name not in target_src.infos:
                raise MergeError(
                    f"vocabulary tensor {name!r} is missing from model {self.target_name!r} "
                    f"({target_src.path}), whose tokenizer defines the output vocabulary"
                )
            shape = target_src.info(name).shape
            for mname, src in [("", base), *sources.items()]:
                other = src.info(name).shape if name in src.infos else None
                if other is None or other[1:] != shape[1:]:
                    where = f"model {mname!r}" if mname else "the base"
                    raise MergeError(
                        f"vocabulary tensor {name!r} has shape {other} in {where} but {shape} in "
                        f"model {self.target_name!r}; only the vocabulary dimension may differ"
                    )
            self.shapes[name] = shape

    def merge(self, name: str, base_t: torch.Tensor, sources: dict[str, Source], opts: dict):
        from tbi_merging.vocab import gather_rows, row_map

        target_t = self.target.get(name)  # [V_out, D]
        rows = target_t.shape[0]
        base_rows = row_map(self.vocab, self.vocabs[""], rows, base_t.shape[0])
        base_al = gather_rows(base_t, base_rows, target_t)  # [V_out, D]
        fts = {}
        for mname, src in sources.items():
            t = target_t if mname == self.target_name else src.get(name)
            fts[mname] = gather_rows(t, row_map(self.vocab, self.vocabs[mname], rows, t.shape[0]), base_al)
        merged, stats = merge_tensors(base_al, fts, tensor_name=name, return_stats=True, **opts)
        new = base_rows < 0
        merged[new] = target_t[new].float()  # tokens the base lacks: verbatim from the vocabulary's model
        return merged.to(base_t.dtype), stats, int(new.sum())


def _write_checkpoint(config, base: Checkpoint, sources: dict[str, Source], tmp: Path, on_tensor) -> dict:
    aligner = _VocabAligner(config, base, sources) if config.align_vocab else None
    items = _plan(config, base, sources, aligner.shapes if aligner else {})
    by_shard: dict[str, list[_Item]] = {}
    for item in items:
        by_shard.setdefault(item.shard, []).append(item)
    report_tensors: dict[str, dict] = {}
    weight_map: dict[str, str] = {}
    total_size = 0
    done = 0
    for shard, shard_items in by_shard.items():
        writer = ShardWriter(tmp / shard, [(i.name, i.code, i.shape) for i in shard_items])
        try:
            for item in shard_items:
                report_tensors[item.name] = _produce(config, item, base, sources, aligner, writer)
                weight_map[item.name] = shard
                done += 1
                if on_tensor is not None:
                    on_tensor(item.name, done, len(items))
        except BaseException:
            writer.abort()
            raise
        writer.close()
        total_size += writer.total_size
    if base.sharded:
        index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2))
    files_from = config.config_from or config.align_vocab
    files_dir = (
        base.path if files_from is None or is_adapter(sources[files_from].path) else sources[files_from].path
    )
    copied = _copy_side_files(files_dir, tmp, config.report_name)
    return _report(config, report_tensors, copied, files_dir)


def _produce(config, item: _Item, base: Checkpoint, sources, aligner, writer: ShardWriter) -> dict:
    """Write one output tensor and return its report entry. Merged tensors stream chunk by chunk."""
    if item.action == "merge":
        opts = _options(config, item)
        if all(isinstance(src, Checkpoint) for src in sources.values()):
            base_t = base.lazy(item.name)  # read chunk by chunk: memory stays O(chunk) per model
            fts = {name: src.lazy(item.name) for name, src in sources.items()}
        else:
            base_t = base.get(item.name)  # adapters add their ΔW to the loaded base tensor
            fts = {name: src.get(item.name, base_t) for name, src in sources.items()}
        writer.begin(item.name)
        try:
            stats = merge_tensors(base_t, fts, tensor_name=item.name, sink=writer.write_chunk, **opts)
        except MergeError as exc:
            files = [f"the base: {base.info(item.name).file}"] + [
                f"{name}: {src.info(item.name).file if isinstance(src, Checkpoint) else src.file}"
                for name, src in sources.items()
            ]
            raise MergeError(f"{exc} [files: {'; '.join(files)}]") from exc
        writer.end()
        return _stats_entry("merge", opts, stats)
    if item.action == "base":
        writer.write_raw(item.name, base.raw(item.name))
        return {"action": "base"}
    if item.action == "take":
        src = sources[item.source]
        if isinstance(src, Checkpoint):
            writer.write_raw(item.name, src.raw(item.name))
        else:  # an adapter's tensor is its ΔW added to the base's
            writer.write(
                item.name, src.get(item.name, base.get(item.name) if item.name in base.infos else None)
            )
        return {"action": "take", "from": item.source}
    base_t = base.get(item.name)
    opts = _options(config, item)
    merged, stats, new_rows = aligner.merge(item.name, base_t, sources, opts)
    writer.write(item.name, merged)
    entry = _stats_entry("align", opts, stats)
    entry["rows_from_" + config.align_vocab] = new_rows
    return entry


def _stats_entry(action: str, opts: dict, stats: TensorStats) -> dict:
    entry = {
        "action": action,
        "method": opts["method"],
        "numel": stats.numel,
        "kept_fraction": {k: round(v, 6) for k, v in stats.kept_fraction.items()},
    }
    if stats.sign_conflict_fraction is not None:
        entry["sign_conflict_fraction"] = round(stats.sign_conflict_fraction, 6)
    if opts["method"] in ("ties", "dare_ties"):
        entry["density"] = resolve_density(opts["method"], opts["density"])
    if opts["method"].startswith("dare_"):
        entry["drop_rate"] = opts["drop_rate"]
    if opts["weights"] is not None:
        entry["weights"] = opts["weights"]
    return entry


def _report(config: MergeConfig, tensors: dict[str, dict], copied: list[str], files_dir: Path) -> dict:
    merged = [e for e in tensors.values() if e["action"] in ("merge", "align")]
    numel = sum(e["numel"] for e in merged) or 1
    kept = {
        m.name: sum(e["kept_fraction"].get(m.name, 0.0) * e["numel"] for e in merged) / numel
        for m in config.models
    }
    conflict = sum(e.get("sign_conflict_fraction", 0.0) * e["numel"] for e in merged) / numel
    return {
        "tool": "tbi-merging",
        "config": config.to_dict(),
        "normalize_used": resolve_normalize(config.method, config.compat, config.normalize),
        "summary": {
            "tensors": len(tensors),
            "merged": sum(e["action"] == "merge" for e in tensors.values()),
            "aligned": sum(e["action"] == "align" for e in tensors.values()),
            "taken": sum(e["action"] == "take" for e in tensors.values()),
            "copied_from_base": sum(e["action"] == "base" for e in tensors.values()),
            "kept_fraction": {k: round(v, 6) for k, v in kept.items()},
            "sign_conflict_fraction": round(conflict, 6),
        },
        "files_copied_from": str(files_dir),
        "files_copied": copied,
        "tensors": tensors,
    }


def _copy_side_files(src: Path, dst: Path, report_name: str) -> list[str]:
    """Config, generation config, tokenizer and other small files; never weights or pickles."""
    copied = []
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name in (INDEX_NAME, report_name, ADAPTER_CONFIG):
            continue
        if f.name.endswith(_SKIP_SUFFIXES):
            continue
        shutil.copy2(f, dst / f.name)
        copied.append(f.name)
    return copied


def _write_adapter(config: MergeConfig, sources: dict[str, LoraAdapter], tmp: Path, on_tensor) -> dict:
    """Merge the adapters' ΔW per layer and factor the result back to rank ``config.adapter_rank``."""
    import torch
    from safetensors.torch import save_file

    from tbi_merging.lora import low_rank_factors

    targets = list(dict.fromkeys(t for src in sources.values() for t in src.layers))
    tensors: dict[str, torch.Tensor] = {}
    report: dict[str, dict] = {}
    first = next(iter(sources.values()))
    for i, target in enumerate(targets, 1):
        deltas = {name: src.delta(target) for name, src in sources.items()}
        shape = next(d.shape for d in deltas.values() if d is not None)
        deltas = {n: (d if d is not None else torch.zeros(shape)) for n, d in deltas.items()}
        item = _Item(target, "merge", "F32", tuple(shape), "", rule=config.rule_for(target))
        opts = _options(config, item)
        merged, stats = merge_tensors(
            torch.zeros(shape), deltas, tensor_name=target, return_stats=True, **opts
        )
        owner = next(src for src in sources.values() if target in src.layers)
        if owner.fan_in_fan_out:
            merged = merged.T
        a, b, err = low_rank_factors(merged, config.adapter_rank, seed=config.seed)
        layer = owner.layers[target]
        tensors[f"{layer.module}.lora_A.weight"] = a.to(owner.dtype)
        tensors[f"{layer.module}.lora_B.weight"] = b.to(owner.dtype)
        entry = _stats_entry("merge", opts, stats)
        entry["relative_reconstruction_error"] = round(err, 8)
        report[target] = entry
        if on_tensor is not None:
            on_tensor(target, i, len(targets))
    save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    adapter_cfg = dict(first.config)
    modules = []
    for src in sources.values():
        tm = src.config.get("target_modules") or []
        modules.extend([tm] if isinstance(tm, str) else tm)
    adapter_cfg.update(
        r=config.adapter_rank,
        lora_alpha=config.adapter_rank,  # scaling 1: the singular values live in A and B
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
        target_modules=sorted(set(modules)),
    )
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_cfg, indent=2))
    for f in sorted(first.path.iterdir()):
        if (
            f.is_file()
            and f.name not in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
            and not f.name.endswith(_SKIP_SUFFIXES)
        ):
            shutil.copy2(f, tmp / f.name)
    errors = [e["relative_reconstruction_error"] for e in report.values()]
    result = _report(config, report, [], first.path)
    result["summary"]["adapter_rank"] = config.adapter_rank
    result["summary"]["max_relative_reconstruction_error"] = max(errors, default=0.0)
    return result
