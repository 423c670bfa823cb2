"""Hugging Face safetensors checkpoints, read and written one tensor at a time.

The streaming path needs no torch: headers are parsed into dtype codes, merged tensors are read as numpy
views of a memory map, copied tensors as bytes, and the output is written from numpy arrays or bytes. torch
is imported only to return torch tensors (``get``, flat slices) for adapters, vocabulary alignment and
the ``linear`` method.

Reading validates every shard's header before anything is merged (a missing shard, a truncated file or a
tensor absent from the shard the index names fails early, naming the file). Writing streams: the header
of each output shard is written first (all shapes are known from the plan), then each tensor's bytes
as soon as it is merged, so no shard is ever held in memory.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tbi_merging.errors import MergeError

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

#: safetensors dtype code: (torch dtype name, bytes per element, floating point)
DTYPES: dict[str, tuple[str, int, bool]] = {
    "F64": ("float64", 8, True),
    "F32": ("float32", 4, True),
    "F16": ("float16", 2, True),
    "BF16": ("bfloat16", 2, True),
    "I64": ("int64", 8, False),
    "I32": ("int32", 4, False),
    "I16": ("int16", 2, False),
    "I8": ("int8", 1, False),
    "U8": ("uint8", 1, False),
    "BOOL": ("bool", 1, False),
    "F8_E4M3": ("float8_e4m3fn", 1, True),
    "F8_E5M2": ("float8_e5m2", 1, True),
}
_CODE_OF_TORCH = {f"torch.{name}": code for code, (name, _, _) in DTYPES.items()}
# codes the merge kernels read in place from a memory map (bf16 as its uint16 bit patterns)
MAPPED = {"BF16": np.dtype(np.uint16), "F32": np.dtype(np.float32)}
_PAGE = mmap.PAGESIZE


def is_adapter(path: str | Path) -> bool:
    """A peft LoRA adapter directory (rather than a full checkpoint)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def dtype_code(x) -> str:
    """The safetensors code of a torch dtype, or of a tensor, LazyTensor or TensorInfo."""
    code = getattr(x, "code", None)
    if code is not None:
        return code
    return _CODE_OF_TORCH[str(getattr(x, "dtype", x))]


def torch_dtype(code: str) -> torch.dtype:
    import torch

    return getattr(torch, DTYPES[code][0])


def is_float_code(code: str) -> bool:
    return DTYPES[code][2]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, from the shard header."""

    file: Path
    code: str  # safetensors dtype code (BF16, F32, ...)
    shape: tuple[int, ...]
    offset: int = 0  # absolute byte offset of the data in ``file``

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.code][1]

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.code)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and check a safetensors header: tensors in file order, and the ``__metadata__``."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise MergeError(
                    f"{path} is truncated ({size} bytes): not a safetensors file; re-copy or re-save it"
                )
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise MergeError(
                    f"{path} is truncated: its header claims {n} bytes but the file has {size}; re-copy or re-save it"
                )
            raw = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise MergeError(
            f"cannot read safetensors header of {path}: {exc}; re-copy or re-save the file"
        ) from exc
    meta = raw.pop("__metadata__", None) or {}
    infos: list[tuple[int, str, TensorInfo]] = []
    end = 0
    for name, entry in raw.items():
        if entry.get("dtype") not in DTYPES:
            raise MergeError(f"{path}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
        start, stop = entry["data_offsets"]
        infos.append((start, name, TensorInfo(path, entry["dtype"], tuple(entry["shape"]), 8 + n + start)))
        end = max(end, stop)
    if 8 + n + end > size:
        last = max(raw, key=lambda k: raw[k]["data_offsets"][1])
        raise MergeError(
            f"{path} is truncated: tensor {last!r} ends at byte {8 + n + end} but the file has {size} bytes; "
            "re-copy or re-save the checkpoint"
        )
    return {name: info for _, name, info in sorted(infos, key=lambda t: t[0])}, meta


def _read(info: TensorInfo, name: str, first: int, count: int, label: str) -> torch.Tensor:
    """Elements [first, first + count) of a tensor, flat, read into a fresh torch tensor."""
    import torch

    out = torch.empty(count, dtype=info.dtype)
    _read_into(info, name, first, out.view(torch.uint8).numpy(), label)
    return out


def _pread_into(fd: int, buf: np.ndarray, offset: int) -> int:
    """Read buf.nbytes bytes at ``offset`` into ``buf``; the number read (short at the end of the file)."""
    if not buf.nbytes:
        return 0
    if hasattr(os, "preadv"):  # straight into the buffer
        return os.preadv(fd, [buf], offset)
    data = os.pread(fd, buf.nbytes, offset)
    buf.reshape(-1).view(np.uint8)[: len(data)] = np.frombuffer(data, np.uint8)
    return len(data)


def _read_into(info: TensorInfo, name: str, first: int, buf: np.ndarray, label: str, fd: int | None = None):
    """Read elements [first, ...) of a tensor into the bytes of ``buf`` (one positioned read, on ``fd`` or
    on the file opened for it)."""
    offset = info.offset + first * DTYPES[info.code][1]
    try:
        if fd is None:
            with info.file.open("rb") as f:
                got = _pread_into(f.fileno(), buf, offset)
        else:
            got = _pread_into(fd, buf, offset)
    except OSError as exc:
        raise MergeError(f"{label}: cannot read tensor {name!r} from {info.file}: {exc}") from exc
    if got != buf.nbytes:
        raise MergeError(
            f"{label}: {info.file} ended inside tensor {name!r} (read {got} of {buf.nbytes} "
            "bytes); re-copy or re-save the checkpoint"
        )


class LazyTensor:
    """A tensor left on disk and read by flat ranges, for the merge core's chunked passes.

    It supports what :func:`tbi_merging.merge_tensors` uses on its inputs (``shape``, ``code``,
    ``is_floating_point``, ``detach``, ``reshape(-1)``, zero-copy windows, reads into buffers and flat
    slices), so merging a tensor holds only a chunk of each model in memory instead of whole tensors.
    """

    def __init__(self, info: TensorInfo, name: str, label: str, owner: Checkpoint) -> None:
        self.info, self.name, self.label = info, name, label
        self.shape = info.shape
        self.code = info.code
        self._owner = owner
        if info.code not in MAPPED:
            self.view = None  # the merge core reads other dtypes into buffers and converts them

    @property
    def dtype(self) -> torch.dtype:
        return self.info.dtype

    def view(self, start: int, count: int) -> np.ndarray:
        """Flat elements [start, start + count) as a read-only array over the shard's memory map (no copy;
        bf16 as uint16 bit patterns). Pages are read on first touch; :meth:`release` drops them again."""
        dtype = MAPPED[self.code]
        return np.frombuffer(
            self._owner.mapped(self.info.file), dtype, count, self.info.offset + start * dtype.itemsize
        )

    def release(self, start: int, count: int) -> None:
        """Drop the pages of elements [start, start + count) from this process's resident set (the file
        stays in the page cache): a streamed tensor never holds more than a chunk per model."""
        mm = self._owner.mapped(self.info.file)
        if not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return  # not on this platform: the pages stay until the map closes
        size = MAPPED[self.code].itemsize
        first = (self.info.offset + start * size) // _PAGE * _PAGE
        mm.madvise(mmap.MADV_DONTNEED, first, self.info.offset + (start + count) * size - first)

    def numel(self) -> int:
        return self.info.numel

    def is_floating_point(self) -> bool:
        return is_float_code(self.code)

    def detach(self) -> LazyTensor:
        return self

    def reshape(self, *shape) -> LazyTensor:
        if shape not in ((-1,), ((-1,),)):
            raise MergeError(f"internal: a LazyTensor only flattens, asked for {shape}")
        return self

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Read flat elements [start, ...) into the bytes of ``out`` (a contiguous array of this tensor's
        element size), with one positioned read on the shard's open file."""
        _read_into(self.info, self.name, start, out, self.label, self._owner.opened(self.info.file))

    def __getitem__(self, key: slice) -> torch.Tensor:
        """A flat slice, read into a fresh torch tensor."""
        if not isinstance(key, slice):
            raise MergeError(f"internal: unsupported LazyTensor index {type(key).__name__}")
        start, stop, step = key.indices(self.numel())
        if step != 1:
            raise MergeError("internal: a LazyTensor reads contiguous ranges only")
        return _read(self.info, self.name, start, max(0, stop - start), self.label)


class Checkpoint:
    """A Hugging Face checkpoint directory: ``model.safetensors`` or shards + ``model.safetensors.index.json``.

    Args:
        path: the directory.
        label: how errors name it (``the base``, ``model 'ko'``).
    """

    def __init__(self, path: str | Path, label: str) -> None:
        self.path = Path(path)
        self.label = label
        if not self.path.is_dir():
            raise MergeError(
                f"{label}: {self.path} is not a directory; give a Hugging Face checkpoint directory"
            )
        index = self.path / INDEX_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as exc:
                raise MergeError(f"{label}: cannot read {index} ({exc}); it needs a 'weight_map'") from exc
            self.shards = list(dict.fromkeys(weight_map.values()))
            missing = [s for s in self.shards if not (self.path / s).is_file()]
            if missing:
                raise MergeError(
                    f"{label}: shard {missing[0]} named in {index} is missing from {self.path}; "
                    "copy the complete checkpoint"
                )
        elif (self.path / SINGLE_NAME).is_file():
            weight_map = None
            self.shards = [SINGLE_NAME]
        else:
            raise MergeError(
                f"{label}: no {SINGLE_NAME} or {INDEX_NAME} in {self.path}; give a safetensors checkpoint "
                "(re-save .bin checkpoints with save_pretrained(..., safe_serialization=True))"
            )
        self.sharded = weight_map is not None
        self._maps: dict[Path, mmap.mmap] = {}
        self._fds: dict[Path, int] = {}
        self.infos: dict[str, TensorInfo] = {}
        self.shard_tensors: dict[str, list[str]] = {}
        for shard in self.shards:
            infos, _ = read_header(self.path / shard)
            self.shard_tensors[shard] = list(infos)
            self.infos.update(infos)
        if weight_map is not None:
            for name, shard in weight_map.items():
                if name not in self.shard_tensors[shard]:
                    raise MergeError(
                        f"{label}: tensor {name!r} is listed in {index} for {shard} but is not in that file; "
                        "the index and shards come from different saves"
                    )

    def names(self) -> list[str]:
        return list(self.infos)

    def info(self, name: str) -> TensorInfo:
        return self.infos[name]

    def get(self, name: str, base: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor into a fresh torch tensor (``base`` is ignored; adapters use it)."""
        info = self.infos[name]
        return _read(info, name, 0, info.numel, self.label).reshape(info.shape)

    def raw(self, name: str) -> np.ndarray:
        """One tensor's bytes (for copying it to the output unchanged), with a positioned read.

        Not ``safe_open``: its tensors are views of a memory map whose touched pages count in the process's
        resident memory until the map is closed."""
        info = self.infos[name]
        out = np.empty(info.nbytes, dtype=np.uint8)
        _read_into(info, name, 0, out, self.label, self.opened(info.file))
        return out

    def lazy(self, name: str) -> LazyTensor:
        """The tensor left on disk, read range by range by the merge core."""
        return LazyTensor(self.infos[name], name, self.label, self)

    def mapped(self, file: Path) -> mmap.mmap:
        """The read-only memory map of one shard file, made on first use."""
        mm = self._maps.get(file)
        if mm is None:
            mm = self._maps[file] = mmap.mmap(self.opened(file), 0, access=mmap.ACCESS_READ)
        return mm

    def opened(self, file: Path) -> int:
        """A read-only descriptor of one shard file, opened on first use."""
        fd = self._fds.get(file)
        if fd is None:
            try:
                fd = self._fds[file] = os.open(file, os.O_RDONLY)
            except OSError as exc:
                raise MergeError(f"{self.label}: cannot open {file}: {exc}") from exc
        return fd

    def close(self) -> None:
        """Close the shard maps (one still exported to a live array closes when that array is freed) and
        files."""
        for mm in self._maps.values():
            with contextlib.suppress(BufferError):
                mm.close()
        for fd in self._fds.values():
            os.close(fd)
        self._maps.clear()
        self._fds.clear()


class ShardWriter:
    """Streams one safetensors file: header from the planned (name, dtype code, shape) list, then the tensors
    in that order with :meth:`write`, :meth:`write_raw` or :meth:`begin` / :meth:`write_chunk` / :meth:`end`."""

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...]]], metadata=None):
        self.path = path
        self._order = [name for name, _, _ in entries]
        self._expected = {name: (code, tuple(shape)) for name, code, shape in entries}
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for name, code, shape in entries:
            n = TensorInfo(path, code, tuple(shape)).nbytes
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        self.total_size = offset
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # safetensors aligns the data section to 8 bytes
        self._file = path.open("wb")
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._next = 0

    def begin(self, name: str) -> None:
        """Start the next planned tensor; its bytes follow through :meth:`write_chunk`."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            expected = self._order[self._next] if self._next < len(self._order) else None
            raise MergeError(f"internal: {self.path.name} expected tensor {expected!r}, got {name!r}")
        self._current = name
        self._remaining = TensorInfo(self.path, *self._expected[name]).nbytes

    def write_chunk(self, chunk) -> None:
        """Append a flat piece of the current tensor: a numpy array of its planned element size (bf16 as
        uint16 bit patterns) or a torch tensor of its planned dtype."""
        code = self._expected[self._current][0]
        if isinstance(chunk, np.ndarray):
            if chunk.itemsize != DTYPES[code][1]:
                raise MergeError(f"internal: tensor {self._current!r} chunk is {chunk.dtype}, planned {code}")
            data = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
        else:
            import torch

            if dtype_code(chunk) != code:
                raise MergeError(f"internal: tensor {self._current!r} chunk is {chunk.dtype}, planned {code}")
            data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
        self._remaining -= data.nbytes
        self._file.write(data.data)

    def end(self) -> None:
        if self._remaining != 0:
            raise MergeError(
                f"internal: tensor {self._current!r} is {self._remaining} bytes short of its plan"
            )
        self._next += 1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write a whole torch tensor (planned dtype and shape)."""
        if tuple(tensor.shape) != self._expected.get(name, (None, None))[1]:
            raise MergeError(
                f"internal: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"planned {self._expected.get(name, (None, None))[1]}"
            )
        self.begin(name)
        self.write_chunk(tensor)
        self.end()

    def write_raw(self, name: str, data: np.ndarray) -> None:
        """Write a whole tensor from its bytes (a tensor copied unchanged from an input)."""
        self.begin(name)
        self._remaining -= data.nbytes
        self._file.write(data.data)
        self.end()

    def abort(self) -> None:
        self._file.close()

    def close(self) -> None:
        self._file.close()
        if self._next != len(self._order):
            raise MergeError(f"internal: {self.path.name} got {self._next} of {len(self._order)} tensors")
