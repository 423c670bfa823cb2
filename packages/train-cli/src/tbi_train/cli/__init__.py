"""The `tbi` command line: Typer commands only; each parses, calls one function and prints."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tbi_train.errors import TrainError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="TBI toolkit: bilingual VLM experiments.")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log library messages (INFO)."),
) -> None:
    """Build, train, merge and evaluate bilingual (Korean + English) vision-language models."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def version() -> None:
    """Print the versions of the six TBI packages."""
    from importlib.metadata import version as dist_version

    for dist in [
        "tbi-vision-rope",
        "tbi-projectors",
        "tbi-merging",
        "tbi-mole",
        "tbi-evalbench",
        "tbi-train",
    ]:
        typer.echo(f"{dist} {dist_version(dist)}")


def _fail(console: Console, exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(1)


@app.command()
def train(
    config: Annotated[
        str | None, typer.Argument(help="A preset name (tiny, ...) or a YAML/JSON config file.")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. phases.0.steps=10.")
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Start from this preset.")] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Training seed (overrides the config's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run folder (default runs/<name>-seed<seed>).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run's last complete checkpoint.")
    ] = False,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code", help="Allow checkpoints that ship their own model code (InternLM2)."
        ),
    ] = False,
) -> None:
    """Train a VLM through all phases of a preset or config file."""
    from tbi_train.cli._progress import RichProgress
    from tbi_train.config import config_hash, resolve_config
    from tbi_train.train import train as run_training

    console = Console()
    extra = list(overrides or [])
    if config is not None and "=" in config:
        extra.insert(0, config)
        config = None
    if trust_remote_code:
        extra.append("model.lm.trust_remote_code=true")
    try:
        cfg = resolve_config(config, preset=preset, overrides=extra, seed=seed)
        run_dir = out or Path("runs") / f"{cfg.name}-seed{cfg.seed}"
        console.print(f"run [bold]{cfg.name}[/] config {config_hash(cfg)} -> {run_dir}", highlight=False)
        with RichProgress(console) as progress:
            result = run_training(cfg, run_dir, resume=resume, callback=progress)
    except TrainError as exc:
        _fail(console, exc)
    table = Table("phase", "step", *result.evals[0]["eval"]) if result.evals else None
    for record in result.evals:
        table.add_row(
            str(record["phase"]), str(record["step"]), *(f"{v:.4f}" for v in record["eval"].values())
        )
    if table is not None:
        console.print(table)
    console.print(f"final model: {result.final_model}", highlight=False)


@app.command()
def generate(
    model: Annotated[
        Path, typer.Argument(help="A saved VLM folder (a run's final/ or a checkpoint's model/).")
    ],
    data: Annotated[
        Path, typer.Option("--data", help="LLaVA-style JSON/JSONL with questions and gold answers.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Predictions JSONL (default: beside the model).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N samples.")] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Answer length cap (seed 000: 512).")
    ] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per generation batch.")] = 8,
    image_root: Annotated[
        Path | None, typer.Option("--image-root", help="Folder image paths are relative to.")
    ] = None,
) -> None:
    """Answer the questions of a dataset with a trained VLM (greedy) and score them against the gold answers."""
    from tbi_train.eval import predict_file

    console = Console()
    target = out or model / "predictions.jsonl"
    try:
        scores = predict_file(model, data, target, limit=limit, max_new_tokens=max_new_tokens,
                              batch_size=batch_size, image_root=image_root)  # fmt: skip
    except TrainError as exc:
        _fail(console, exc)
    table = Table("metric", "score")
    for name, value in scores.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(f"predictions: {target}", highlight=False)


data_app = typer.Typer(no_args_is_help=True, help="Make and check training data.")
app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to create (train.json, val.json, images/).")],
    n: Annotated[int, typer.Option("--n", help="Number of records.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Generator seed (same seed, same files).")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing folder.")] = False,
) -> None:
    """Generate synthetic bilingual (Korean/English) text-rich images with questions and answers."""
    from tbi_train.synth import generate_synthetic

    console = Console()
    try:
        path = generate_synthetic(out, n=n, seed=seed, overwrite=overwrite)
    except TrainError as exc:
        _fail(console, exc)
    console.print(f"wrote {n} records to {path}", highlight=False)


@data_app.command("check")
def data_check(
    path: Annotated[
        Path, typer.Argument(help="A LLaVA .json/.jsonl file, a synth folder, or a local HF dataset.")
    ],
    image_root: Annotated[
        Path | None, typer.Option("--image-root", help="Folder media paths are relative to.")
    ] = None,
) -> None:
    """Validate a dataset and report bad samples (exit code 1 when any is found)."""
    from tbi_train.data import check_dataset

    console = Console()
    try:
        report = check_dataset(path, image_root)
    except TrainError as exc:
        _fail(console, exc)
    console.print(report.summary(), highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def merge(ctx: typer.Context) -> None:
    """Merge fine-tuned checkpoints or LoRA adapters (DARE, TIES, task arithmetic); `tbi merge --help` for options.

    The options are tbi-merging's own (`python -m tbi_merging`), passed through unchanged, e.g.
    `tbi merge --base B --model en=EN:0.6 --model ko=KO:0.4 --method dare_ties --dare 0.9 --out OUT`.
    """
    from tbi_merging.cli import main as merging_main

    raise typer.Exit(merging_main(list(ctx.args), prog="tbi merge"))


def main() -> None:
    app()
