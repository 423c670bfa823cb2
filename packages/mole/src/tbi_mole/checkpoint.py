"""Lazy tensor access to a Hugging Face safetensors checkpoint: read only the keys asked for."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open

from tbi_mole.errors import MoLEError

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


class SafetensorsCheckpoint:
    """The tensor keys of a checkpoint and where each lives, without reading any tensor.

    Accepts a directory holding `model.safetensors.index.json` (sharded) or `model.safetensors`, or a path to
    one `.safetensors` file. Tensors are read by `read(keys)`, opening each shard once with `safe_open`
    (memory-mapped: only the requested tensors' bytes are touched).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file_of: dict[str, Path] = {}
        if self.path.is_dir() and (self.path / _INDEX).is_file():
            index_path = self.path / _INDEX
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise MoLEError(
                    f"{index_path}: not a safetensors index ({err}); it needs a 'weight_map' of key -> shard file. "
                    "Re-save the checkpoint with save_pretrained()."
                ) from err
            self._file_of = {key: self.path / shard for key, shard in weight_map.items()}
        else:
            file = self.path / _SINGLE if self.path.is_dir() else self.path
            if not file.is_file() or file.suffix != ".safetensors":
                raise MoLEError(
                    f"{self.path}: no safetensors checkpoint there (looked for {_INDEX}, {_SINGLE} or a "
                    ".safetensors file). Save the model with save_pretrained(path) (safetensors is the default); "
                    "pickled .bin checkpoints are not read."
                )
            with safe_open(str(file), framework="pt") as handle:
                self._file_of = dict.fromkeys(handle.keys(), file)

    def keys(self) -> set[str]:
        """Every tensor key of the checkpoint."""
        return set(self._file_of)

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """Load exactly `keys`; a missing key raises a `MoLEError` naming it and the checkpoint."""
        by_file: dict[Path, list[str]] = defaultdict(list)
        for key in keys:
            if key not in self._file_of:
                raise MoLEError(f"{self.path}: tensor {key!r} is not in this checkpoint.")
            by_file[self._file_of[key]].append(key)
        out: dict[str, torch.Tensor] = {}
        for file, file_keys in by_file.items():
            if not file.is_file():
                raise MoLEError(f"{self.path}: shard {file.name} listed in {_INDEX} is missing.")
            with safe_open(str(file), framework="pt") as handle:
                for key in file_keys:
                    out[key] = handle.get_tensor(key)
        return out
