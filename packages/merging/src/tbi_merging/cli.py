"""``python -m tbi_merging`` (and ``tbi merge``, which calls :func:`main`): one definition of the options.

Example::

    python -m tbi_merging --base B --model en=EN:0.6 --model ko=KO:0.4 \\
        --method dare_ties --dare 0.9 --ties-sign mass --seed 42 --out OUT

Options given on the command line override the same keys of ``--config merge.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tbi_merging.config import MergeConfig, ModelSpec, parse_component, parse_model_spec, read_yaml
from tbi_merging.core import COMPAT_MODES, METHODS, SIGN_METHODS
from tbi_merging.errors import MergeError
from tbi_merging.merge import merge_checkpoints


def build_parser(prog: str = "python -m tbi_merging") -> argparse.ArgumentParser:
    """The argument parser; every option defaults to None so a YAML ``--config`` can supply it."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Merge fine-tunes (full checkpoints or LoRA adapters) of one base with DARE, TIES, "
        "DARE+TIES, task arithmetic or linear averaging; streaming, atomic, with a JSON report.",
    )
    p.add_argument(
        "--config", help="YAML file with the same options (keys as in MergeConfig; 'dare' = drop rate)"
    )
    p.add_argument("--base", help="base checkpoint directory (θ₀)")
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME=PATH[:WEIGHT]",
        help="fine-tuned checkpoint or LoRA adapter with its weight λ (repeat)",
    )
    p.add_argument("--out", help="output directory (refused if it exists, unless --overwrite)")
    p.add_argument("--method", choices=METHODS, help="merge method (default dare_ties)")
    p.add_argument("--dare", type=float, metavar="P", help="DARE drop rate p (default 0.9)")
    p.add_argument(
        "--density", type=float, help="TIES kept fraction (default 0.2 for ties, 1.0 for dare_ties)"
    )
    p.add_argument("--ties-sign", choices=SIGN_METHODS, help="TIES sign election (default mass)")
    p.add_argument("--compat", choices=COMPAT_MODES, help="semantics to reproduce (default paper)")
    p.add_argument(
        "--rescale",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="DARE rescale of the kept deltas (default on)",
    )
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="divide by the summed weights of the contributing models (default on)",
    )
    p.add_argument("--scale", type=float, help="λ, global factor on the merged task vector (default 1)")
    p.add_argument("--seed", type=int, help="DARE seed (default 0)")
    p.add_argument(
        "--component",
        action="append",
        metavar="GLOB:key=value,...",
        help="per-component options, e.g. 'vision_tower.*:density=0.5,dare=0.5,weight.ko=0.3' (repeat)",
    )
    p.add_argument(
        "--unshared", choices=("error", "take"), help="tensors the models do not share (default error)"
    )
    p.add_argument(
        "--take-from", metavar="NAME", help="model providing unshared tensors with --unshared take"
    )
    p.add_argument(
        "--align-vocab", metavar="NAME", help="align vocabulary rows by token string to NAME's tokenizer"
    )
    p.add_argument("--config-from", metavar="NAME", help="copy config/tokenizer files from this model")
    p.add_argument(
        "--to-adapter", type=int, metavar="RANK", help="LoRA inputs: write one adapter of this rank"
    )
    p.add_argument(
        "--allow-nonfinite", action="store_true", default=None, help="do not refuse NaN/Inf inputs"
    )
    p.add_argument(
        "--allow-dtype-mismatch",
        action="store_true",
        default=None,
        help="accept models storing a tensor in another float dtype than the base",
    )
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing output")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="merge threads (default: OMP_NUM_THREADS, else the usable cores)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return p


_KEYS = {
    "base": "base", "out": "out", "method": "method", "dare": "drop_rate", "density": "density",
    "ties_sign": "sign", "compat": "compat", "rescale": "rescale", "normalize": "normalize", "scale": "scale",
    "seed": "seed", "unshared": "unshared", "take_from": "take_from", "align_vocab": "align_vocab",
    "config_from": "config_from", "to_adapter": "adapter_rank", "allow_dtype_mismatch": "allow_dtype_mismatch",
    "overwrite": "overwrite", "threads": "threads",
}  # fmt: skip


def config_from_args(args: argparse.Namespace) -> MergeConfig:
    """Merge the YAML file (if any) and the command-line options into a :class:`MergeConfig`."""
    data: dict[str, Any] = {}
    source = "command line"
    if args.config:
        data = read_yaml(args.config)
        source = f"{args.config} + command line"
    for arg, key in _KEYS.items():
        value = getattr(args, arg)
        if value is not None:
            data[key] = value
    if args.allow_nonfinite:
        data["check_finite"] = False
    if args.model:
        data["models"] = [parse_model_spec(m) for m in args.model]
    if args.component:
        data["components"] = [vars(parse_component(c)) for c in args.component]
    data["models"] = [
        {"name": m.name, "path": str(m.path), "weight": m.weight} if isinstance(m, ModelSpec) else m
        for m in data.get("models") or []
    ]
    return MergeConfig.from_dict(data, source=source)


def main(argv: list[str] | None = None, prog: str = "python -m tbi_merging") -> int:
    """Run a merge; returns the exit code (0 success, 2 bad input or usage error; never calls sys.exit)."""
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: return argparse's code instead of exiting the caller
        return exc.code if isinstance(exc.code, int) else 2
    console = Console(stderr=True)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        config = config_from_args(args)
        if args.no_progress or not console.is_terminal:
            out = merge_checkpoints(config)
        else:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=True) as progress:
                task = progress.add_task("merging", total=None)

                def on_tensor(name: str, done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total, description=name[-40:])

                out = merge_checkpoints(config, on_tensor=on_tensor)
    except MergeError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    console.print(f"merged → {out} (report: {out / config.report_name})", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
