"""The vision-to-language projector zoo (MLP, C-Abstractor, Perceiver, pixel-shuffle, spatial tokens, token compression)."""

from .adaptive_compression import AdaptiveCompressionConfig, AdaptiveCompressor
from .base import Projector
from .c_abstractor import CAbstractor, CAbstractorConfig
from .config import ProjectorConfig
from .errors import ProjectorError
from .foveated import FoveatedQueryConfig, FoveatedQueryProjector
from .ldp import LdpConfig, LdpProjector
from .linear import LinearConfig, LinearProjector
from .mlp import MlpConfig, MlpProjector
from .multi_token import MultiTokenConfig, MultiTokenProjector
from .output import ProjectorOutput
from .perceiver import PerceiverConfig, PerceiverResampler
from .pixel_shuffle import PixelShuffleConfig, PixelShuffleMlp, space_to_depth
from .pyramid_c_abstractor import PyramidCAbstractor, PyramidCAbstractorConfig
from .pyramid_drop import PyramidDropConfig, PyramidDropProjector
from .pyramid_drop_lm import (
    DropResult,
    PyramidDropHook,
    PyramidDropLMConfig,
    decoder_query_key,
    gather_positions,
    keep_counts,
    last_instruction_attention,
    rank_and_drop,
)
from .query_attn import QueryAttnConfig, QueryAttnProjector
from .registry import (
    build_projector,
    get_projector_class,
    list_projectors,
    load_projector,
    projector_parameter_count,
)
from .spatial_tokens import SpatialTokens, SpatialTokensConfig

__version__ = "0.1.0"

__all__ = [
    "AdaptiveCompressionConfig",
    "AdaptiveCompressor",
    "CAbstractor",
    "CAbstractorConfig",
    "DropResult",
    "FoveatedQueryConfig",
    "FoveatedQueryProjector",
    "LdpConfig",
    "LdpProjector",
    "LinearConfig",
    "LinearProjector",
    "MlpConfig",
    "MlpProjector",
    "MultiTokenConfig",
    "MultiTokenProjector",
    "PerceiverConfig",
    "PerceiverResampler",
    "PixelShuffleConfig",
    "PixelShuffleMlp",
    "Projector",
    "ProjectorConfig",
    "ProjectorError",
    "ProjectorOutput",
    "PyramidCAbstractor",
    "PyramidCAbstractorConfig",
    "PyramidDropConfig",
    "PyramidDropHook",
    "PyramidDropLMConfig",
    "PyramidDropProjector",
    "QueryAttnConfig",
    "QueryAttnProjector",
    "SpatialTokens",
    "SpatialTokensConfig",
    "build_projector",
    "decoder_query_key",
    "gather_positions",
    "get_projector_class",
    "keep_counts",
    "last_instruction_attention",
    "list_projectors",
    "load_projector",
    "projector_parameter_count",
    "rank_and_drop",
    "space_to_depth",
]
