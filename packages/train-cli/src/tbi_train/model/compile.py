"""Opt-in `torch.compile` of a VLM's LM and vision tower (`RunConfig.compile`, `tbi train/eval --compile`).

Each part is compiled in place with `nn.Module.compile`, so parameter names, `state_dict` keys, adapters and
saving are unchanged. Compilation is lazy (it happens on the first call); if it fails there (no C++ compiler
for inductor, an op dynamo cannot trace, ...) the part logs why and runs eagerly from then on, so a run never
stops because of the flag. The projector stays eager: it is small and many projectors branch on shapes.
"""

from __future__ import annotations

import logging

from torch import nn

__all__ = ["compile_vlm"]

logger = logging.getLogger(__name__)


def compile_vlm(vlm: nn.Module, parts: tuple[str, ...] = ("lm", "vision"), backend="inductor") -> list[str]:
    """Compile `vlm.<part>` for each of `parts` in place; returns the parts that were set up for compilation.

    `dynamic=None`: the first call compiles for its shapes, a second shape recompiles with dynamic sizes
    (generation and variable-length batches do not recompile per length). `backend`: torch.compile's.
    """
    done = []
    for name in parts:
        module = getattr(vlm, name, None)
        if module is None:
            continue
        module.compile(dynamic=None, backend=backend)
        module._compiled_call_impl = _with_fallback(module, name, module._compiled_call_impl)
        done.append(name)
    return done


def _with_fallback(module: nn.Module, name: str, compiled):
    """`compiled` (the module's compiled call), falling back to the eager call for good on a compile error."""
    import torch

    errors = (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError)

    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except errors as exc:
            cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc  # the backend's own error
            lines = str(cause).strip().splitlines()
            logger.warning(
                "torch.compile of the %s failed at its first call (%s: %s); it runs eagerly from here on. "
                "Run without --compile (compile=false) to silence this.",
                name,
                type(cause).__name__,
                lines[0] if lines else "",
            )
            module._compiled_call_impl = None
            return module._call_impl(*args, **kwargs)

    return call
