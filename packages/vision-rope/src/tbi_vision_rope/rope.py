"""2D rotary position embeddings for (t, h, w) patch grids, expressed as per-head frequencies.

Every variant is reduced to two tensors ``freq_h, freq_w`` of shape ``[H, D/2]``: the rotation angle of
pair ``j`` of head ``h`` for a token at patch row ``y`` and column ``x`` is

    θ[h, j] = y · freq_h[h, j] + x · freq_w[h, j]

and the pair ``(a, b)`` of q or k is rotated to ``(a cos θ - b sin θ, a sin θ + b cos θ)``.

- ``axial`` (Qwen2-VL, EVA-02): the first ``dim_h / 2`` pairs rotate with the row, the next ``dim_w / 2``
  with the column, ``freq[i] = base^(-2i / dim_axis)``; identical for every head.
- ``mixed`` (RoPE-Mixed, Heo et al. 2024, arXiv:2403.13298): learnable ``freq_h, freq_w`` per head, both
  dense, initialised as magnitudes ``base^(-2i / (D/2))`` along a random direction per head (and the
  direction turned by π/2 for the second half of the pairs).
- linear interpolation (position interpolation, Chen et al. 2023): with ``train_grid`` and ``max_grid``
  set, every frequency is scaled by ``train_grid / max_grid`` so that positions up to ``max_grid`` span
  the angle range seen in training. The scale is a property of the model, not of the input, so an image
  gives the same result alone or packed with others.

Pair layouts: ``half`` pairs channel ``j`` with ``j + D/2`` (``rotate_half``, Qwen2-VL); ``interleaved``
pairs ``2j`` with ``2j + 1`` (EVA-02, timm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .errors import VisionRopeError

RopeKind = Literal["axial", "mixed"]
RopeLayout = Literal["half", "interleaved"]


@dataclass(frozen=True)
class RopeConfig:
    """2D-RoPE settings; the defaults are seed 000's ``rope_config``."""

    kind: RopeKind = "axial"
    """``axial`` (fixed, rows/columns split the head dim) or ``mixed`` (learnable per-head frequencies)."""
    base_freq: float = 10000.0
    """Frequency base of the axial variant (seed 000: 10000)."""
    dim_h: int | None = None
    """Channels rotated by the row position (even); None = half of the head dim (seed 000: 64 of 128)."""
    dim_w: int | None = None
    """Channels rotated by the column position (even); None = the rest up to half of the head dim."""
    layout: RopeLayout = "half"
    """Channel pairing: ``half`` (rotate_half, Qwen2-VL) or ``interleaved`` (EVA-02/timm)."""
    interpolation: Literal["linear", "none"] = "linear"
    """How positions beyond ``train_grid`` are handled (seed 000: linear)."""
    train_grid: int | None = None
    """Longest grid side (patches) seen in training; with ``max_grid`` turns on interpolation."""
    max_grid: int | None = None
    """Longest grid side (patches) to support; frequencies are scaled by ``train_grid / max_grid``."""
    mixed_base: float = 10.0
    """Magnitude base of the mixed variant (RoPE-Mixed uses 10)."""
    seed: int = 0
    """Seed of the random per-head directions of the mixed variant."""


class Rope2D(nn.Module):
    """Per-head 2D rotary frequencies ``freq_h, freq_w: [H, D/2]`` (see the module docstring).

    Args:
        num_heads: attention heads ``H``.
        head_dim: channels per head ``D`` (even).
        config: a :class:`RopeConfig`.

    Raises:
        VisionRopeError: odd head dim, odd or too large ``dim_h``/``dim_w``, unknown kind or layout.
    """

    def __init__(self, num_heads: int, head_dim: int, config: RopeConfig | None = None) -> None:
        super().__init__()
        config = config or RopeConfig()
        if head_dim % 2:
            raise VisionRopeError(f"2D-RoPE rotates channel pairs: head_dim={head_dim} must be even")
        if config.layout not in ("half", "interleaved"):
            raise VisionRopeError(f"RopeConfig.layout={config.layout!r}: use 'half' or 'interleaved'")
        self.num_heads, self.head_dim, self.config = num_heads, head_dim, config
        pairs = head_dim // 2
        if config.kind == "axial":
            self._axial_split = _axial_split(pairs, config)
            # An integer buffer follows .to(device) but not .to(dtype): the frequencies are rebuilt in fp32
            # on use, so a bf16 tower keeps exact angles.
            self.register_buffer("pair_index", torch.arange(pairs), persistent=False)
        elif config.kind == "mixed":
            freq_h, freq_w = _mixed_frequencies(num_heads, pairs, config)
            self.freq_h = nn.Parameter(freq_h)
            self.freq_w = nn.Parameter(freq_w)
        else:
            raise VisionRopeError(f"RopeConfig.kind={config.kind!r}: use 'axial' or 'mixed'")

    @property
    def layout(self) -> RopeLayout:
        return self.config.layout

    @property
    def interpolation_scale(self) -> float:
        """``train_grid / max_grid`` when linear interpolation is on and needed, else 1."""
        c = self.config
        if c.interpolation == "linear" and c.train_grid and c.max_grid and c.max_grid > c.train_grid:
            return c.train_grid / c.max_grid
        return 1.0

    def frequencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(freq_h, freq_w)``, fp32 (or fp64) ``[H, D/2]`` (an expanded view for the axial kind)."""
        scale = self.interpolation_scale
        if self.config.kind == "axial":
            freq_h, freq_w = _axial_frequencies(self.pair_index, *self._axial_split, self.config.base_freq)
        else:
            # at least fp32 (a float64 copy of the module stays float64, for reference checks)
            dtype = torch.promote_types(self.freq_h.dtype, torch.float32)
            freq_h, freq_w = self.freq_h.to(dtype), self.freq_w.to(dtype)
        if scale != 1.0:
            freq_h, freq_w = freq_h * scale, freq_w * scale
        return freq_h.expand(self.num_heads, -1), freq_w.expand(self.num_heads, -1)

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, head_dim={self.head_dim}, kind={self.config.kind}, layout={self.layout}"
        )


def _axial_split(pairs: int, config: RopeConfig) -> tuple[int, int]:
    """Pairs rotated by the row and by the column position."""
    for name, value in (("dim_h", config.dim_h), ("dim_w", config.dim_w)):
        if value is not None and (value <= 0 or value % 2):
            raise VisionRopeError(f"RopeConfig.{name}={value} must be a positive even number of channels")
    n_h = (pairs + 1) // 2 if config.dim_h is None else config.dim_h // 2
    n_w = (pairs - n_h) if config.dim_w is None else config.dim_w // 2
    if n_h + n_w > pairs or n_w < 0:
        raise VisionRopeError(
            f"RopeConfig dim_h + dim_w = {2 * n_h} + {2 * n_w} exceeds head_dim={2 * pairs}; "
            f"choose dims that sum to at most the head dim (e.g. dim_h = dim_w = {pairs})"
        )
    return n_h, n_w


def _axial_frequencies(
    pair_index: torch.Tensor, n_h: int, n_w: int, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[1, P]`` each: ``base^(-2i/dim_h)`` on pairs ``i < n_h``, ``base^(-2i/dim_w)`` on the next ``n_w``."""
    j = pair_index.float()
    zero = torch.zeros_like(j)
    freq_h = torch.where(j < n_h, base ** (-2 * j / (2 * n_h)), zero)
    j_w = j - n_h
    freq_w = torch.where((j_w >= 0) & (j_w < n_w), base ** (-2 * j_w / max(2 * n_w, 1)), zero)
    return freq_h[None], freq_w[None]


def _mixed_frequencies(heads: int, pairs: int, config: RopeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(config.seed)
    first = (pairs + 1) // 2
    magnitude = config.mixed_base ** (-torch.arange(first, dtype=torch.float64) * 2 / pairs)
    magnitude = torch.cat([magnitude, magnitude[: pairs - first]])  # [P]
    turn = torch.cat([torch.zeros(first), torch.full((pairs - first,), math.pi / 2)]).double()  # [P]
    angle = torch.rand(heads, 1, generator=generator, dtype=torch.float64) * 2 * math.pi + turn  # [H, P]
    return (magnitude * torch.sin(angle)).float(), (magnitude * torch.cos(angle)).float()


def apply_rope(
    x: torch.Tensor,
    pos_h: torch.Tensor,
    pos_w: torch.Tensor,
    freq_h: torch.Tensor,
    freq_w: torch.Tensor,
    layout: RopeLayout = "half",
) -> torch.Tensor:
    """Rotates ``x: [T, H, D]`` by ``θ = pos_h · freq_h + pos_w · freq_w`` (fp32 or fp64 math, x's dtype out).

    ``pos_h, pos_w: [T]`` integer patch coordinates; ``freq_h, freq_w: [H, D/2]`` (or ``[1, D/2]``).
    Differentiable in ``x`` and in the frequencies.
    """
    cos, sin = rope_tables(pos_h, pos_w, freq_h, freq_w, torch.promote_types(x.dtype, torch.float32))
    return rotate(x, cos, sin, layout)


def rope_tables(
    pos_h: torch.Tensor, pos_w: torch.Tensor, freq_h: torch.Tensor, freq_w: torch.Tensor, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos θ, sin θ: [T, H, D/2]`` (``[T, 1, D/2]`` when the frequencies are shared by all heads)."""
    if freq_h.stride(0) == 0 and freq_w.stride(0) == 0:
        freq_h, freq_w = freq_h[:1], freq_w[:1]  # head-shared: one angle table for all heads
    angle = pos_h.to(dtype)[:, None, None] * freq_h.to(dtype) + pos_w.to(dtype)[:, None, None] * freq_w.to(
        dtype
    )
    return angle.cos(), angle.sin()


def rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: RopeLayout = "half"
) -> torch.Tensor:
    """Rotates the channel pairs of ``x: [T, H, D]`` by precomputed ``cos, sin: [T, H|1, D/2]``."""
    return _Rotate.apply(x, cos, sin, layout == "interleaved")  # [T, H, D]


def _pair_views(x: torch.Tensor, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if interleaved:
        return x[..., 0::2], x[..., 1::2]
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


def _rotate_into(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool,
    sign: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(a, b) -> (a cos - sign·b sin, b cos + sign·a sin)`` over the last dim, written into ``out`` (a
    fresh tensor of cos's dtype when None; any strides, e.g. a head-major view)."""
    if out is None:
        out = torch.empty(x.shape, dtype=cos.dtype, device=x.device)
    a, b = _pair_views(x, interleaved)
    out_a, out_b = _pair_views(out, interleaved)
    torch.mul(a, cos, out=out_a)
    out_a.addcmul_(b, sin, value=-sign)
    torch.mul(b, cos, out=out_b)
    out_b.addcmul_(a, sin, value=sign)
    return out


def _full_tables(
    cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin: [..., P]`` -> full-width ``c, s: [..., 2P]`` in the pair layout, with
    ``rot(x) = x c + swap(x) s`` (``swap(a, b) = (b, a)``): ``c = (cos, cos)``, ``s = (-sin, sin)``."""
    if interleaved:
        return torch.stack([cos, cos], -1).flatten(-2), torch.stack([-sin, sin], -1).flatten(-2)
    return torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)


def _rotate_full_into(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, sign: float, out: torch.Tensor
) -> torch.Tensor:
    """``out = x c + sign · swap(x) s`` with full-width tables from :func:`_full_tables` (``out`` of any
    strides, e.g. a head-major view). Same result as :func:`_rotate_into` but 1 mul + 1 addcmul over whole
    rows plus one contiguous copy for ``swap(x)``, instead of 4 ops over strided half-rows: on the CPU each
    pass costs about the same, whatever its width, so fewer passes is faster (−15 % per rotation)."""
    a, b = _pair_views(x, interleaved)
    swapped = torch.stack([b, a], -1).flatten(-2) if interleaved else torch.cat([b, a], -1)  # [..., 2P]
    torch.mul(x, cos, out=out)
    return out.addcmul_(swapped, sin, value=sign)


class _Rotate(torch.autograd.Function):
    """Pairwise rotation by precomputed ``cos, sin: [T, H|1, D/2]``; backward rotates by ``-θ``.

    One pass per output instead of the slice/cat graph of the textbook formula (which allocates and
    zero-fills full-size gradients for every slice). Gradients for cos/sin:
    ``∂/∂cos = g_a a + g_b b``, ``∂/∂sin = g_b a - g_a b``, summed over broadcast heads.
    """

    @staticmethod
    def forward(ctx, x, cos, sin, interleaved):
        ctx.interleaved = interleaved
        ctx.save_for_backward(x if (cos.requires_grad or sin.requires_grad) else None, cos, sin)
        return _rotate_into(x, cos, sin, interleaved, 1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, cos, sin = ctx.saved_tensors
        grad_x = grad_cos = grad_sin = None
        if ctx.needs_input_grad[0]:
            grad_x = _rotate_into(grad, cos, sin, ctx.interleaved, -1.0).to(grad.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            g_a, g_b = (t.to(cos.dtype) for t in _pair_views(grad, ctx.interleaved))
            a, b = (t.to(cos.dtype) for t in _pair_views(x, ctx.interleaved))
            grad_cos = (g_a * a + g_b * b).sum(1, keepdim=True) if cos.shape[1] == 1 else g_a * a + g_b * b
            grad_sin = (g_b * a - g_a * b).sum(1, keepdim=True) if sin.shape[1] == 1 else g_b * a - g_a * b
        return grad_x, grad_cos, grad_sin, None
