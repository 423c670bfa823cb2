"""One registry for the zoo (timm style): ``build_projector(name, **config)``, ``list_projectors()``."""

from __future__ import annotations

import difflib
import os
from typing import Any

from .base import Projector, read_projector_config
from .errors import ProjectorError


def _projector_classes() -> dict[str, type[Projector]]:
    # Imported here so the table is built from the modules themselves, not kept as mutable global state.
    from .adaptive_compression import AdaptiveCompressor
    from .c_abstractor import CAbstractor
    from .foveated import FoveatedQueryProjector
    from .ldp import LdpProjector
    from .linear import LinearProjector
    from .mlp import MlpProjector
    from .multi_token import MultiTokenProjector
    from .perceiver import PerceiverResampler
    from .pixel_shuffle import PixelShuffleMlp
    from .pyramid_c_abstractor import PyramidCAbstractor
    from .pyramid_drop import PyramidDropProjector
    from .query_attn import QueryAttnProjector
    from .spatial_tokens import SpatialTokens

    classes = [
        LinearProjector,
        MlpProjector,
        CAbstractor,
        PyramidCAbstractor,
        PerceiverResampler,
        QueryAttnProjector,
        PixelShuffleMlp,
        LdpProjector,
        SpatialTokens,
        FoveatedQueryProjector,
        MultiTokenProjector,
        PyramidDropProjector,
        AdaptiveCompressor,
    ]
    return {cls.name: cls for cls in classes}


def list_projectors() -> list[str]:
    """Names accepted by ``build_projector``, in the order of the README table."""
    return list(_projector_classes())


def get_projector_class(name: str) -> type[Projector]:
    """The class registered under ``name``."""
    classes = _projector_classes()
    if name not in classes:
        close = difflib.get_close_matches(str(name), list(classes), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ProjectorError(f"unknown projector {name!r}.{hint} Available: {', '.join(classes)}")
    return classes[name]


def make_config(name: str, *, preset: str | None = None, **options: Any):
    """The typed config of projector ``name`` with a named preset and explicit options applied in that order."""
    cls = get_projector_class(name)
    values: dict[str, Any] = {}
    if preset is not None:
        presets = cls.config_class.PRESETS
        if preset not in presets:
            raise ProjectorError(f"{name} has no preset {preset!r}; presets: {sorted(presets) or 'none'}")
        values.update(presets[preset])
    values.update({k: v for k, v in options.items() if v is not None or k not in ("input_dim", "output_dim")})
    return cls.config_class.from_dict(values, source=f"build_projector({name!r})")


def build_projector(
    name: str,
    *,
    input_dim: int | None = None,
    output_dim: int | None = None,
    preset: str | None = None,
    **config: Any,
) -> Projector:
    """Build a projector by name: ``build_projector("c-abstractor", input_dim=1024, output_dim=2048)``.

    Args:
        name: one of ``list_projectors()``.
        input_dim: vision feature channels C (default 1024).
        output_dim: language-model width D (default 2048).
        preset: a named option set of that projector (e.g. ``"honeybee"`` for ``c-abstractor``).
        **config: any field of the projector's config dataclass (including ``seed``).

    Raises:
        ProjectorError: an unknown name, preset or option, or invalid values.
    """
    cls = get_projector_class(name)
    cfg = make_config(name, preset=preset, input_dim=input_dim, output_dim=output_dim, **config)
    return cls(cfg)


def projector_parameter_count(name: str, *, preset: str | None = None, **config: Any) -> int:
    """Parameters of a projector from its config alone, without allocating it (e.g. the 763M LLaVA-SP)."""
    cls = get_projector_class(name)
    return cls.count_parameters(make_config(name, preset=preset, **config))


def load_projector(directory: str | os.PathLike) -> Projector:
    """Load any projector saved with ``save_pretrained`` (reads ``config.json`` to find its class)."""
    name, _ = read_projector_config(directory)
    return get_projector_class(name).from_pretrained(directory)
