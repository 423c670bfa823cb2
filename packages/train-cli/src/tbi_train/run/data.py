"""The suite's data: synthetic bilingual data made once, one tokenizer for every chain, and per-phase mix files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tbi_train.config import RunConfig, to_dict
from tbi_train.experiments import DataMix, ExperimentError

__all__ = ["SuiteData", "prepare_data"]


class SuiteData:
    """Train/val files, the shared tokenizer folder (random-init LM only) and the mix files made from them."""

    def __init__(self, root: Path, train: Path, val: Path, tokenizer: Path | None):
        self.root, self.train, self.val, self.tokenizer = root, train, val, tokenizer

    def mix_file(self, mix: DataMix | None) -> Path:
        """A JSON file beside the training split holding the records of `mix` (made once, then reused).

        Languages: N = min over languages l of available_l / share_l; take floor(share_l * N) of each in file
        order. Modalities the same way (video = records with "video", image = with "image", text = neither).
        """
        if mix is None or (not mix.languages and not mix.tasks and not mix.modalities):
            return self.train
        blob = json.dumps(to_dict(mix), sort_keys=True)
        path = self.train.with_name(f"mix-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.json")
        if path.is_file():
            return path
        records = json.loads(self.train.read_text(encoding="utf-8"))
        if mix.tasks:
            records = [r for r in records if r.get("task") in mix.tasks]
        records = _share(records, mix.languages, lambda r: r.get("language"), "language", self.train)
        records = _share(records, mix.modalities, _modality, "modality", self.train)
        if not records:
            raise ExperimentError(
                f"data mix {mix.describe()} selects no record of {self.train}; use other data."
            )
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
        return path


def _modality(record: dict) -> str:
    return "video" if "video" in record else "image" if ("image" in record or "images" in record) else "text"


def _share(records: list[dict], shares, key, what: str, source: Path) -> list[dict]:
    if not shares:
        return records
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(key(r), []).append(r)
    missing = [name for name, share in shares if share > 0 and not by.get(name)]
    if missing:
        raise ExperimentError(
            f"{source} has no {what} {missing} record for the mix {dict(shares)}; add such records to the data."
        )
    n = min(len(by[name]) / share for name, share in shares if share > 0)
    keep = {id(r) for name, share in shares if share > 0 for r in by[name][: int(share * n)]}
    return [r for r in records if id(r) in keep]


def prepare_data(cfg: RunConfig, root: str | Path) -> SuiteData:
    """The data of `cfg` (its files, or synthetic data generated once under `root`) and its shared tokenizer."""
    from tbi_train.data import load_conversations

    root = Path(root)
    if cfg.data.train is not None:
        if cfg.data.val is None:
            raise ExperimentError(
                "data.train is set but data.val is not; suites score every run on data.val."
            )
        train, val = Path(cfg.data.train), Path(cfg.data.val)
        folder = root / "data-files"
    else:
        from tbi_train.synth import generate_synthetic

        d = cfg.data
        spec = {"n": d.synthetic_n, "seed": d.synthetic_seed, "size": d.synthetic_image_size,
                "weights": dict(d.synthetic_task_weights)}  # fmt: skip
        folder = (
            root / f"synthetic-{hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]}"
        )
        if not (folder / "train.json").is_file():
            options = {"image_size": d.synthetic_image_size}
            if d.synthetic_task_weights:
                options["task_weights"] = dict(d.synthetic_task_weights)
            generate_synthetic(folder, n=d.synthetic_n, seed=d.synthetic_seed, overwrite=True, **options)
        train, val = folder / "train.json", folder / "val.json"
    tokenizer = None
    if cfg.model.lm.path is None and cfg.model.tokenizer.path is None:
        # One BPE for every chain of the suite, trained on the whole training split (not one phase's mix).
        from tbi_train.model import train_bpe_tokenizer

        tokenizer = folder / f"tokenizer-{cfg.model.tokenizer.vocab_size}"
        if not (tokenizer / "tokenizer.json").is_file():
            dataset = load_conversations(train, image_root=cfg.data.image_root)
            texts = [
                t["value"].replace("<image>", " ")
                for i in range(len(dataset))
                for t in dataset.describe(i).conversations
            ]
            train_bpe_tokenizer(texts, cfg.model.tokenizer.vocab_size, tokenizer)
    return SuiteData(folder, train, val, tokenizer)
