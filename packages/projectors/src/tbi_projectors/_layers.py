"""Building blocks shared by several projectors (private)."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ProjectorError

ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ProjectorError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def linear_params(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


class Mlp(nn.Sequential):
    """``depth`` linear layers with ``act`` between them: in → hidden → … → out (depth 1: one Linear)."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, depth: int = 2, act: str = "gelu"):
        if depth < 1:
            raise ProjectorError(f"an MLP needs depth >= 1, got {depth}")
        layers: list[nn.Module] = []
        widths = [n_in] + [n_hidden] * (depth - 1) + [n_out]
        for i in range(depth):
            if i:
                layers.append(make_activation(act))
            layers.append(nn.Linear(widths[i], widths[i + 1]))
        super().__init__(*layers)

    @staticmethod
    def count(n_in: int, n_hidden: int, n_out: int, depth: int = 2) -> int:
        widths = [n_in] + [n_hidden] * (depth - 1) + [n_out]
        return sum(linear_params(a, b) for a, b in itertools.pairwise(widths))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``[B, C, H, W]`` map (as timm's LayerNorm2d used by Honeybee)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # [B, H, W, C]
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # [B, C, H, W]


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(W2 act(W1 mean_hw(x)))`` with a ``channels → reduced`` bottleneck."""

    def __init__(self, channels: int, reduced: int, act: str):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = make_activation(act)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
        s = self.fc2(self.act(self.fc1(s)))  # [B, C, 1, 1]
        return x * torch.sigmoid(s)

    @staticmethod
    def count(channels: int, reduced: int) -> int:
        return 2 * channels * reduced + reduced + channels


class Bottleneck(nn.Module):
    """Residual bottleneck block with squeeze-excitation (ResNet/RegNet style, LayerNorm2d instead of BN).

    ``y = act(norm(conv1x1(x)))`` (in → mid), ``y = act(norm(conv_kxk(y, groups)))``, ``y = SE(y)``,
    ``y = norm(conv1x1(y))`` (mid → out), ``out = act(y + shortcut(x))`` where the shortcut is the identity
    or a 1×1 conv + norm when ``in != out``. LayerNorm2d rather than BatchNorm keeps it independent of the
    batch (Honeybee makes the same choice).
    """

    def __init__(self, n_in: int, n_out: int, mid: int, kernel: int, groups: int, se_reduced: int, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, mid, 1, bias=False)
        self.norm1 = LayerNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel, padding=kernel // 2, groups=groups, bias=False)
        self.norm2 = LayerNorm2d(mid)
        self.se = SqueezeExcite(mid, se_reduced, act) if se_reduced > 0 else nn.Identity()
        self.conv3 = nn.Conv2d(mid, n_out, 1, bias=False)
        self.norm3 = LayerNorm2d(n_out)
        self.shortcut = (
            nn.Identity()
            if n_in == n_out
            else nn.Sequential(nn.Conv2d(n_in, n_out, 1, bias=False), LayerNorm2d(n_out))
        )
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))  # [B, mid, H, W]
        y = self.act(self.norm2(self.conv2(y)))  # [B, mid, H, W]
        y = self.norm3(self.conv3(self.se(y)))  # [B, out, H, W]
        return self.act(y + self.shortcut(x))

    @staticmethod
    def count(n_in: int, n_out: int, mid: int, kernel: int, groups: int, se_reduced: int) -> int:
        total = (
            n_in * mid + 2 * mid + (mid // groups) * mid * kernel * kernel + 2 * mid + mid * n_out + 2 * n_out
        )
        if se_reduced > 0:
            total += SqueezeExcite.count(mid, se_reduced)
        if n_in != n_out:
            total += n_in * n_out + 2 * n_out
        return total


def to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, N, C]`` row-major tokens → ``[B, C, h, w]`` feature map."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, grid[0], grid[1])


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` → ``[B, h*w, C]`` row-major tokens."""
    return x.flatten(2).transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head attention with explicit weights: ``softmax(q kᵀ / √d) v``.

    q ``[B, H, M, d]``, k/v ``[B, H, N, d]`` → (out ``[B, H, M, d]``, weights ``[B, H, M, N]``). The softmax
    runs in float32 so bf16 inputs keep a well-normalised distribution.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).to(softmax_dtype(q.dtype)) / math.sqrt(
        q.shape[-1]
    )  # [B, H, M, N]
    weights = scores.softmax(dim=-1)
    return torch.matmul(weights.to(v.dtype), v), weights


def softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precisions, the input dtype otherwise (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, H*d]`` → ``[B, H, L, d]``."""
    b, n, _ = x.shape
    return x.reshape(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, d]`` → ``[B, L, H*d]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)
