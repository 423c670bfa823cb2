"""Window layout of a packed sequence of images/videos (Qwen2.5-VL style), built once per batch.

Input order (what the patch embedding produces), image after image: the image's ``num_prefix`` tokens
(CLS, registers), then every frame's ``h × w`` patches in raster order — or, with ``merge_size`` m > 1
(Qwen2.5-VL), merge-block major: m×m blocks in raster order, each block's tokens in raster order.

Window-major order (what the attention op consumes): per image the prefix tokens, then per frame the
``W × W`` windows in raster order (the last row/column of windows is cut short: the grid is padded
logically, never physically), within a window the merge blocks in raster order. Tokens attend

- in window layers: iff same frame and same window ``(pos_h // W, pos_w // W)``; the prefix tokens of an
  image form a group of their own;
- in global layers: iff same frame (Qwen2.5-VL) or, with ``joint_frames``, same image/video.

``perm[i]`` is the input index of window-major token ``i``; ``inv_perm`` undoes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from .errors import VisionRopeError


@dataclass(frozen=True)
class SegmentGroups:
    """Attention segments grouped by length so that each group is one batched attention call.

    ``groups[g] = (length, count, index)``: ``index`` is a LongTensor ``[count * length]`` of window-major
    token positions (segment after segment), or None when the group is all tokens in order.
    ``restore`` (or None) maps the concatenated group outputs back to window-major order.
    """

    groups: tuple[tuple[int, int, torch.Tensor | None], ...]
    restore: torch.Tensor | None
    max_len: int


@dataclass(frozen=True)
class WindowLayout:
    """Per-token attention metadata of a packed batch (see the module docstring); build with
    :func:`build_layout`. Token tensors are ``[T]`` in window-major order."""

    grid_thw: tuple[tuple[int, int, int], ...]
    window: int
    merge_size: int
    num_prefix: int
    joint_frames: bool
    perm: torch.Tensor
    inv_perm: torch.Tensor
    pos_h: torch.Tensor
    pos_w: torch.Tensor
    window_seq_id: torch.Tensor
    global_seq_id: torch.Tensor
    cu_window_seqlens: torch.Tensor
    cu_seqlens: torch.Tensor
    window_groups: SegmentGroups = field(repr=False)
    global_groups: SegmentGroups = field(repr=False)
    identity_perm: bool = False

    @property
    def num_tokens(self) -> int:
        return int(self.perm.numel())

    @property
    def device(self) -> torch.device:
        return self.perm.device

    def to(self, device: torch.device | str) -> WindowLayout:
        """The same layout with every tensor on ``device`` (self when already there)."""
        device = torch.device(device)
        if self.perm.device == device:
            return self
        moved = {
            name: getattr(self, name).to(device)
            for name in (
                "perm",
                "inv_perm",
                "pos_h",
                "pos_w",
                "window_seq_id",
                "global_seq_id",
                "cu_window_seqlens",
                "cu_seqlens",
            )
        }
        return replace(
            self,
            **moved,
            window_groups=_move_groups(self.window_groups, device),
            global_groups=_move_groups(self.global_groups, device),
        )

    def to_window_order(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [T, ...]`` in input order -> window-major order."""
        return x if self.identity_perm else x.index_select(0, self.perm.to(x.device))

    def to_input_order(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [T, ...]`` in window-major order -> input order."""
        return x if self.identity_perm else x.index_select(0, self.inv_perm.to(x.device))


def default_global_layers(num_layers: int, num_global: int = 4) -> list[int]:
    """Evenly spaced global-attention layers ending at the last layer (0-based).

    ``(32, 4) -> [7, 15, 23, 31]`` (Qwen2.5-VL); ``(45, 4) -> [10, 21, 33, 44]`` (seed 001: 4 of 45).
    """
    if num_layers <= 0 or num_global < 0:
        raise VisionRopeError(
            f"default_global_layers(num_layers={num_layers}, num_global={num_global}): use positive counts"
        )
    num_global = min(num_global, num_layers)
    return sorted({round((k + 1) * num_layers / num_global) - 1 for k in range(num_global)})


def build_layout(
    grid_thw: Sequence[Sequence[int]] | torch.Tensor,
    window: int = 0,
    *,
    merge_size: int = 1,
    num_prefix: int = 0,
    joint_frames: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> WindowLayout:
    """Builds the :class:`WindowLayout` of images/videos packed one after another.

    Args:
        grid_thw: ``[N, 3]`` (frames, rows, columns) of patches per image or video.
        window: window side ``W`` in patches; 0 = no windows (every layer attends per frame/image).
        merge_size: side of the merge blocks the input tokens are ordered by (Qwen2.5-VL: 2).
        num_prefix: tokens before each image's patches (CLS/registers): they attend among themselves in
            window layers and to their whole image in global layers; their RoPE position is (0, 0).
        joint_frames: global layers attend across all frames of a video (default: each frame alone).
        cu_seqlens: optional per-image boundaries ``[N + 1]`` to check against ``grid_thw``.
        device: where the layout's tensors live.

    Raises:
        VisionRopeError: empty or non-positive grids, grids not divisible by ``merge_size``, a window not
            divisible by ``merge_size``, prefix tokens on per-frame videos, ``cu_seqlens`` that disagree.
    """
    grids = _check_grids(grid_thw, window, merge_size, num_prefix, joint_frames)
    perm, pos_h, pos_w, win_seq, glob_seq, win_lens, glob_lens = [], [], [], [], [], [], []
    offset, seq = 0, 0
    for t, h, w in grids:
        frame_perm, frame_h, frame_w, frame_windows = _frame_order(h, w, window, merge_size)
        if num_prefix:
            perm.append(torch.arange(offset, offset + num_prefix))
            pos_h.append(torch.zeros(num_prefix, dtype=torch.long))
            pos_w.append(torch.zeros(num_prefix, dtype=torch.long))
            win_seq.append(torch.full((num_prefix,), seq))
            win_lens.append(torch.tensor([num_prefix]))
            seq += 1
        first_frame_seq = seq
        for f in range(t):
            start = offset + num_prefix + f * h * w
            perm.append(frame_perm + start)
            pos_h.append(frame_h)
            pos_w.append(frame_w)
            win_seq.append(torch.full((h * w,), seq))
            win_lens.append(frame_windows)
            seq += 1
        if joint_frames or num_prefix:
            glob_seq.append(torch.full((num_prefix + t * h * w,), first_frame_seq))
            glob_lens.append(num_prefix + t * h * w)
        else:
            glob_seq.append(torch.arange(first_frame_seq, first_frame_seq + t).repeat_interleave(h * w))
            glob_lens += [h * w] * t
        offset += num_prefix + t * h * w
    if cu_seqlens is not None:
        _check_cu_seqlens(cu_seqlens, grids, num_prefix, offset)

    perm_t = torch.cat(perm)
    inv_perm = torch.empty_like(perm_t)
    inv_perm[perm_t] = torch.arange(perm_t.numel())
    window_lengths = torch.cat(win_lens).tolist()
    layout = WindowLayout(
        grid_thw=tuple(grids),
        window=window,
        merge_size=merge_size,
        num_prefix=num_prefix,
        joint_frames=joint_frames,
        perm=perm_t,
        inv_perm=inv_perm,
        pos_h=torch.cat(pos_h).int(),
        pos_w=torch.cat(pos_w).int(),
        window_seq_id=torch.cat(win_seq).int(),
        global_seq_id=torch.cat(glob_seq).int(),
        cu_window_seqlens=_cumulative(window_lengths),
        cu_seqlens=_cumulative(glob_lens),
        window_groups=_segment_groups(window_lengths),
        global_groups=_segment_groups(glob_lens),
        identity_perm=bool(torch.equal(perm_t, torch.arange(perm_t.numel()))),
    )
    return layout if device is None else layout.to(device)


def _check_grids(grid_thw, window: int, merge_size: int, num_prefix: int, joint_frames: bool) -> list:
    grids = grid_thw.tolist() if isinstance(grid_thw, torch.Tensor) else [list(g) for g in grid_thw]
    if not grids:
        raise VisionRopeError("grid_thw is empty: pass one (frames, rows, columns) triple per image")
    if window < 0 or merge_size < 1 or num_prefix < 0:
        raise VisionRopeError(
            f"window={window}, merge_size={merge_size}, num_prefix={num_prefix}: window and num_prefix must be "
            ">= 0 and merge_size >= 1"
        )
    if window and window % merge_size:
        raise VisionRopeError(
            f"window={window} patches is not a multiple of merge_size={merge_size}: windows would split merge "
            f"blocks; use a window of {max(merge_size, window // merge_size * merge_size)}"
        )
    out = []
    for i, g in enumerate(grids):
        if len(g) != 3 or any(int(x) != x or x < 1 for x in g):
            raise VisionRopeError(
                f"grid_thw[{i}]={g}: expected (frames, rows, columns) of positive integers; an image smaller "
                "than one patch has no tokens (resize it to at least one patch)"
            )
        t, h, w = (int(x) for x in g)
        if h % merge_size or w % merge_size:
            raise VisionRopeError(
                f"grid_thw[{i}]=({t}, {h}, {w}) is not divisible by merge_size={merge_size}; resize the image to "
                f"a multiple of {merge_size} patches per side"
            )
        if num_prefix and t > 1 and not joint_frames:
            raise VisionRopeError(
                f"grid_thw[{i}] has {t} frames and num_prefix={num_prefix}: prefix tokens belong to the whole "
                "video, so pass joint_frames=True"
            )
        out.append((t, h, w))
    return out


def _frame_order(h: int, w: int, window: int, m: int) -> tuple[torch.Tensor, ...]:
    """One frame: (perm into input order, pos_h, pos_w in window-major order, window lengths)."""
    bh, bw = torch.meshgrid(torch.arange(h // m), torch.arange(w // m), indexing="ij")
    ih, iw = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")
    # input order: merge blocks raster, then inside each block raster
    row = (bh.reshape(-1, 1) * m + ih.reshape(1, -1)).reshape(-1)  # [h*w]
    col = (bw.reshape(-1, 1) * m + iw.reshape(1, -1)).reshape(-1)  # [h*w]
    if not window:
        return torch.arange(h * w), row, col, torch.tensor([h * w])
    n_ww = -(-w // window)
    window_id = (row // window) * n_ww + col // window
    per_side = window // m
    block_in_window = ((row % window) // m) * per_side + (col % window) // m
    key = (window_id * per_side * per_side + block_in_window) * m * m + (row % m) * m + col % m
    order = torch.argsort(key)
    lengths = torch.bincount(window_id)
    return order, row[order], col[order], lengths[lengths > 0]


def _cumulative(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0).int()


def _segment_groups(lengths: list[int]) -> SegmentGroups:
    starts = torch.tensor([0, *lengths[:-1]], dtype=torch.int64).cumsum(0)
    lens = torch.tensor(lengths)
    total = int(lens.sum())
    unique = sorted(set(lengths))
    if len(unique) == 1:
        return SegmentGroups(((unique[0], len(lengths), None),), None, unique[0])
    groups, order = [], []
    for length in unique:
        seg_starts = starts[lens == length]
        index = (seg_starts[:, None] + torch.arange(length)).reshape(-1)
        groups.append((length, int(seg_starts.numel()), index))
        order.append(index)
    restore = torch.empty(total, dtype=torch.long)
    restore[torch.cat(order)] = torch.arange(total)
    return SegmentGroups(tuple(groups), restore, unique[-1])


def _move_groups(groups: SegmentGroups, device: torch.device) -> SegmentGroups:
    moved = tuple((n, c, None if i is None else i.to(device)) for n, c, i in groups.groups)
    return SegmentGroups(moved, None if groups.restore is None else groups.restore.to(device), groups.max_len)


def _check_cu_seqlens(cu_seqlens: torch.Tensor, grids: list, num_prefix: int, total: int) -> None:
    cu = [int(x) for x in torch.as_tensor(cu_seqlens).reshape(-1).tolist()]
    expected = [0]
    for t, h, w in grids:
        expected.append(expected[-1] + num_prefix + t * h * w)
    if not cu or cu[-1] != total:
        raise VisionRopeError(
            f"cu_seqlens={cu} ends at {cu[-1] if cu else None} but grid_thw describes {total} tokens; "
            "cu_seqlens must start at 0 and end at the token count"
        )
    if cu != expected:
        raise VisionRopeError(
            f"cu_seqlens={cu} disagrees with grid_thw (expected {expected}: one boundary per image, "
            f"{num_prefix} prefix tokens + t*h*w patches each)"
        )
