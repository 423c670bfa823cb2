"""The projector base class: input shapes (single image, video, multi-scale, packed), save/load, counting.

Every projector maps vision features to language-model tokens with one call shape::

    out = proj(features, grid=(h, w))                      # [B, N, C], h * w == N
    out = proj(frames, grid=(h, w))                        # video [B, T, N, C]
    out = proj([f8, f16, f24], grid=[(h, w)] * 3)          # multi-scale (pyramid projectors)
    out = proj(packed, cu_seqlens=cu, grid_thw=thw)        # packed native-resolution images [total, C]

Subclasses implement either ``_forward_frame`` (one frame at a time: video frames are folded into the batch)
or ``_project`` (they see all frames at once), plus ``_tokens_per_frame`` / ``_count_tokens`` and the
parameter formula ``count_parameters``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ProjectorConfig
from .errors import ProjectorError
from .output import ProjectorOutput

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

Grid = tuple[int, int]


class Projector(nn.Module):
    """Base class of every projector of the zoo (see the module docstring for the call shapes)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[ProjectorConfig]] = ProjectorConfig
    needs_grid: ClassVar[bool] = True
    """Whether the 2D layout matters (grid required) or tokens are treated as a set."""
    multi_scale: ClassVar[bool] = False
    extra_inputs: ClassVar[tuple[str, ...]] = ()
    """Keyword inputs ``forward`` accepts besides the features (e.g. ``query`` for ``foveated-query``)."""

    def __init__(self, config: ProjectorConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ProjectorError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self._gradient_checkpointing = False
        # Build under a private RNG stream so the seed alone fixes the weights and global RNG is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self._build()

    # ---- to implement -------------------------------------------------------------------------------
    def _build(self) -> None:
        raise NotImplementedError

    def _forward_frame(self, x: Any, grid: Any, **kwargs: Any) -> ProjectorOutput:
        """One frame per batch row: ``x`` [B, N, C] (a list of them for multi-scale)."""
        raise NotImplementedError

    def _tokens_per_frame(self, grid: Any) -> int:
        raise NotImplementedError

    @classmethod
    def count_parameters(cls, config: ProjectorConfig) -> int:
        """Closed-form parameter count from the config (the README formula); tested against the module."""
        raise NotImplementedError

    # ---- public API ---------------------------------------------------------------------------------
    def forward(
        self,
        features: torch.Tensor | Sequence[torch.Tensor],
        grid: Grid | Sequence[Grid] | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        grid_thw: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> ProjectorOutput:
        """Project vision features to language-model tokens (call shapes in the module docstring)."""
        unknown = sorted(set(kwargs) - set(self._extra_inputs()))
        if unknown:
            accepted = ", ".join(f"{k}=" for k in self._extra_inputs()) or "no extra arguments"
            raise ProjectorError(f"{self.name} got unexpected argument(s) {unknown}; it accepts {accepted}")
        if cu_seqlens is not None or grid_thw is not None:
            return self._forward_packed(features, cu_seqlens, grid_thw, **kwargs)
        xs, grids = self._canonical(features, grid)
        if self.multi_scale:
            return self._project(xs, grids, **kwargs)
        return self._project(xs[0], grids[0], **kwargs)

    def num_output_tokens(self, grid: Grid | Sequence[Grid] | None = None, num_frames: int = 1) -> int:
        """Number of tokens ``M`` the projector emits for one image/video of ``num_frames`` frames."""
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ProjectorError(f"num_frames must be a positive int, got {num_frames!r}")
        grids = self._check_grid_arg(grid)
        return self._count_tokens(grids if self.multi_scale else grids[0], num_frames)

    def num_parameters(self) -> int:
        """Number of parameters, from the closed-form formula of ``count_parameters``."""
        return type(self).count_parameters(self.config)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute the deep blocks in backward instead of storing their activations (training only)."""
        self._gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self._gradient_checkpointing = False

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (each written then renamed)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        _atomic_write(
            out / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"projector": self.name})
        )
        meta = {"projector": self.name, "format_version": FORMAT_VERSION, "config": self.config.to_dict()}
        _atomic_write(out / CONFIG_NAME, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
        logger.info("saved %s projector to %s", self.name, out)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Projector:
        """Load a projector written by ``save_pretrained`` (safetensors only, no pickle)."""
        name, config_values = read_projector_config(directory)
        if name != cls.name:
            raise ProjectorError(
                f"{Path(directory) / CONFIG_NAME} holds a {name!r} projector, not {cls.name!r}; "
                "use tbi_projectors.load_projector(directory) to load whatever it holds"
            )
        config = cls.config_class.from_dict(config_values, source=str(Path(directory) / CONFIG_NAME))
        model = cls(config)
        model.load_weights(Path(directory) / WEIGHTS_NAME)
        return model

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a safetensors state dict into this projector; every key must match."""
        path = Path(path)
        if not path.is_file():
            raise ProjectorError(f"{path} does not exist; save the projector with save_pretrained(directory)")
        state = load_file(str(path))
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ProjectorError(
                f"{path} does not match this {self.name} config: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}; was it saved with a different config.json?"
            )
        for key, value in state.items():
            if value.shape != own[key].shape:
                raise ProjectorError(
                    f"{path}: tensor {key!r} has shape {tuple(value.shape)}, the config expects "
                    f"{tuple(own[key].shape)}"
                )
        self.load_state_dict(state, strict=True)

    # ---- shared machinery ---------------------------------------------------------------------------
    def _input_dims(self) -> list[int]:
        return [self.config.input_dim]

    def _extra_inputs(self) -> tuple[str, ...]:
        return self.extra_inputs

    def _maybe_checkpoint(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _count_tokens(self, grid: Any, num_frames: int) -> int:
        return self._tokens_per_frame(grid) * num_frames

    def _project(self, x: Any, grid: Any, **kwargs: Any) -> ProjectorOutput:
        """Default video handling: fold the T frames into the batch, run ``_forward_frame``, unfold.

        Output tokens are frame-major (all tokens of frame 0, then frame 1, ...); kept indices index the
        flattened ``T * N`` input tokens of the row.
        """
        xs = x if isinstance(x, list) else [x]
        b, t = xs[0].shape[:2]
        folded = [v.reshape(b * t, *v.shape[2:]) for v in xs]
        out = self._forward_frame(folded if isinstance(x, list) else folded[0], grid, **kwargs)
        tokens = out.tokens.reshape(b, -1, out.tokens.shape[-1])  # [B, T*M, D]
        kept = None
        if out.kept_indices is not None:
            n_in = sum(v.shape[2] for v in xs)
            offsets = (
                torch.arange(t, device=tokens.device).repeat_interleave(out.kept_indices.shape[1]) * n_in
            )
            kept = out.kept_indices.reshape(b, -1) + offsets  # [B, T*M]
        attention = None
        if out.attention is not None:
            attention = out.attention.reshape(b, -1, *out.attention.shape[2:])  # [B, T*M, N]
        return ProjectorOutput(tokens=tokens, grid=out.grid, kept_indices=kept, attention=attention)

    def _check_grid_arg(self, grid: Any) -> list[Grid | None]:
        if self.multi_scale:
            n = self._num_scales()
            if grid is None:
                raise ProjectorError(f"{self.name} needs grid=[(h, w)] * {n}, one grid per scale")
            if _is_grid(grid):
                grid = [grid] * n
            grids = list(grid)
            if len(grids) != n:
                raise ProjectorError(f"{self.name} expects {n} scale grids, got {len(grids)}: {grids}")
            return [_check_grid(g, self.name) for g in grids]
        if grid is None:
            if self.needs_grid:
                raise ProjectorError(f"{self.name} needs the 2D layout: pass grid=(h, w) with h * w == N")
            return [None]
        if not _is_grid(grid):
            raise ProjectorError(f"{self.name}: grid must be (h, w) (two positive ints), got {grid!r}")
        return [_check_grid(grid, self.name)]

    def _num_scales(self) -> int:
        return 1

    def _canonical(self, features: Any, grid: Any) -> tuple[list[torch.Tensor], list[Grid | None]]:
        """Validate and bring every input to ``[B, T, N, C]`` with its grid."""
        if isinstance(features, (list, tuple)):
            if not self.multi_scale:
                raise ProjectorError(
                    f"{self.name} takes one feature map, got a list of {len(features)}; pass a single tensor "
                    "(e.g. the last layer) or use a multi-scale projector such as 'pyramid-c-abstractor'"
                )
            xs = list(features)
            if len(xs) != self._num_scales():
                raise ProjectorError(
                    f"{self.name} was built for {self._num_scales()} scales but got {len(xs)} feature maps; "
                    f"pass all {self._num_scales()} (e.g. layers 8/16/24) or rebuild with num_scales={len(xs)}"
                )
        elif isinstance(features, torch.Tensor):
            if self.multi_scale:
                raise ProjectorError(
                    f"{self.name} expects a list of {self._num_scales()} feature maps (one per scale), "
                    "got one tensor"
                )
            xs = [features]
        else:
            raise ProjectorError(
                f"{self.name}: features must be a torch.Tensor, got {type(features).__name__}"
            )
        grids = self._check_grid_arg(grid)
        out = []
        for i, (x, g, c) in enumerate(zip(xs, grids, self._input_dims())):
            where = f"scale {i}" if self.multi_scale else "features"
            if not isinstance(x, torch.Tensor):
                raise ProjectorError(f"{self.name}: {where} must be a torch.Tensor, got {type(x).__name__}")
            if x.dim() == 3:
                x = x.unsqueeze(1)
            elif x.dim() != 4:
                raise ProjectorError(
                    f"{self.name}: {where} has shape {tuple(x.shape)}; expected [B, N, C] or video "
                    "[B, T, N, C] (packed [total, C] needs cu_seqlens= and grid_thw=)"
                )
            if x.shape[-1] != c:
                raise ProjectorError(
                    f"{self.name}: {where} has {x.shape[-1]} channels but the projector was built with "
                    f"input_dim={c}; rebuild it with input_dim={x.shape[-1]} or pass the right encoder layer"
                )
            if g is not None and g[0] * g[1] != x.shape[2]:
                raise ProjectorError(
                    f"{self.name}: {where} has N={x.shape[2]} tokens per frame but grid={g} gives "
                    f"{g[0] * g[1]}; pass the encoder's patch grid (h, w) with h * w == N (drop any CLS token)"
                )
            if x.shape[2] == 0:
                raise ProjectorError(f"{self.name}: {where} has no tokens")
            out.append(x)
        if any(x.shape[:2] != out[0].shape[:2] for x in out):
            raise ProjectorError(
                f"{self.name}: scales disagree on batch/frames: {[tuple(x.shape[:2]) for x in out]}"
            )
        return out, grids

    def _forward_packed(
        self, features: Any, cu_seqlens: Any, grid_thw: Any, **kwargs: Any
    ) -> ProjectorOutput:
        """Packed native-resolution images: run each image on its own grid, pad the outputs to one batch."""
        if cu_seqlens is None or grid_thw is None:
            raise ProjectorError(
                f"{self.name}: packed input needs both cu_seqlens=[I+1] and grid_thw=[I, 3] (t, h, w per image)"
            )
        scales = list(features) if isinstance(features, (list, tuple)) else [features]
        if self.multi_scale and not isinstance(features, (list, tuple)):
            raise ProjectorError(
                f"{self.name}: packed multi-scale input is a list of [total, C] tensors, one per scale"
            )
        if not self.multi_scale and isinstance(features, (list, tuple)):
            raise ProjectorError(
                f"{self.name} takes one packed [total, C] tensor, got a list of {len(features)}"
            )
        if self.multi_scale and len(scales) != self._num_scales():
            raise ProjectorError(
                f"{self.name} was built for {self._num_scales()} scales but got {len(scales)} packed feature maps"
            )
        thw = torch.as_tensor(grid_thw).to("cpu", torch.long)
        cu = torch.as_tensor(cu_seqlens).to("cpu", torch.long)
        if thw.dim() != 2 or thw.shape[1] != 3 or (thw <= 0).any():
            raise ProjectorError(
                f"{self.name}: grid_thw must be [I, 3] positive (t, h, w), got {thw.tolist()}"
            )
        sizes = thw.prod(dim=1)
        if cu.shape != (thw.shape[0] + 1,) or cu[0] != 0 or not torch.equal(cu.diff(), sizes):
            raise ProjectorError(
                f"{self.name}: cu_seqlens {cu.tolist()} does not match grid_thw (t*h*w per image = "
                f"{sizes.tolist()}); cu_seqlens must be [0, n0, n0+n1, ...]"
            )
        for i, (p, c) in enumerate(zip(scales, self._input_dims())):
            if (
                not isinstance(p, torch.Tensor)
                or p.dim() != 2
                or p.shape[0] != int(cu[-1])
                or p.shape[1] != c
            ):
                shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
                raise ProjectorError(
                    f"{self.name}: packed scale {i} must be [total={int(cu[-1])}, C={c}], got {shape}"
                )
        num_images = thw.shape[0]
        outs = []
        for i in range(num_images):
            t, h, w = thw[i].tolist()
            lo, hi = int(cu[i]), int(cu[i + 1])
            xi = [p[lo:hi].reshape(1, t, h * w, p.shape[1]) for p in scales]
            kw = {k: _select_image(v, i, num_images) for k, v in kwargs.items()}
            outs.append(
                self._project(
                    xi if self.multi_scale else xi[0],
                    [(h, w)] * len(xi) if self.multi_scale else (h, w),
                    **kw,
                )
            )
        return _pad_outputs(outs)


def _select_image(value: Any, i: int, num_images: int) -> Any:
    """Row ``i`` of a per-image extra argument (a tensor, or a list of tensors, with ``num_images`` rows)."""
    if isinstance(value, torch.Tensor) and value.shape[:1] == (num_images,):
        return value[i : i + 1]
    if isinstance(value, (list, tuple)):
        return [_select_image(v, i, num_images) for v in value]
    return value


def _is_grid(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value)


def _check_grid(grid: Any, name: str) -> Grid:
    if not _is_grid(grid) or grid[0] <= 0 or grid[1] <= 0:
        raise ProjectorError(f"{name}: a grid must be (h, w) with two positive ints, got {grid!r}")
    return int(grid[0]), int(grid[1])


def _pad_outputs(outs: list[ProjectorOutput]) -> ProjectorOutput:
    lengths = torch.tensor([o.tokens.shape[1] for o in outs], dtype=torch.long)
    longest = int(lengths.max())
    first = outs[0].tokens
    tokens = first.new_zeros(len(outs), longest, first.shape[-1])
    for i, o in enumerate(outs):
        tokens[i, : o.tokens.shape[1]] = o.tokens[0]
    kept = None
    if all(o.kept_indices is not None for o in outs):
        kept = torch.full((len(outs), longest), -1, dtype=torch.long, device=first.device)
        for i, o in enumerate(outs):
            kept[i, : o.kept_indices.shape[1]] = o.kept_indices[0]
    attention = None
    if all(o.attention is not None and o.attention.dim() == 3 for o in outs):
        widest = max(o.attention.shape[2] for o in outs)
        attention = outs[0].attention.new_zeros(len(outs), longest, widest)
        for i, o in enumerate(outs):
            attention[i, : o.attention.shape[1], : o.attention.shape[2]] = o.attention[0]
    grids = {o.grid for o in outs}
    return ProjectorOutput(
        tokens=tokens,
        grid=grids.pop() if len(grids) == 1 else None,
        kept_indices=kept,
        attention=attention,
        lengths=lengths.to(first.device),
    )


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_projector_config(directory: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """Read ``config.json`` of a saved projector: (registered name, config values)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ProjectorError(f"{path} does not exist; is {directory} a directory written by save_pretrained?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ProjectorError(f"{path} is not valid JSON ({err}); re-save the projector") from err
    for key in ("projector", "config"):
        if key not in meta:
            raise ProjectorError(f"{path} has no {key!r} key; it was not written by save_pretrained")
    return meta["projector"], meta["config"]
