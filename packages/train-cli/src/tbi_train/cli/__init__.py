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
    # bitsandbytes (the [qlora] extra) warns on import that an optional CPU kernel package is missing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


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


def _is_experiment(name: str) -> bool:
    """An experiment id of a suite (F4, foveated/A1), not a preset or a config file."""
    from tbi_train.config import list_presets
    from tbi_train.experiments import find_experiment

    if Path(name).exists() or name in list_presets():
        return False
    try:
        find_experiment(name)
    except TrainError:
        return False
    return True


def _run_one_experiment(console, exp_id, preset, seed, out, overrides) -> None:
    from tbi_train.run import SuiteProgress, run_experiment

    try:
        with SuiteProgress(console) as view:
            result = run_experiment(exp_id, preset, seed, out or Path("runs"), overrides, on_event=view)
    except TrainError as exc:
        _fail(console, exc)
    console.print(f"result: {result}", highlight=False)


def _key_values(pairs: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise typer.BadParameter(f"{pair!r}: write NAME=PATH", param_hint=option)
        out[name] = value
    return out


def _seed_list(seeds: str | None) -> list[int] | None:
    if seeds is None:
        return None
    try:
        return [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError as err:
        raise typer.BadParameter(
            f"{seeds!r}: write comma-separated integers, e.g. 42,123,456", param_hint="--seeds"
        ) from err


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
    launcher: Annotated[
        str, typer.Option("--launcher", help="none (this process), torchrun, deepspeed or accelerate.")
    ] = "none",
    nproc: Annotated[int, typer.Option("--nproc", help="Processes per node (one per GPU).")] = 1,
    nodes: Annotated[int, typer.Option("--nodes", help="Machines; run the command on each.")] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", help="This machine's index.")] = 0,
    master_addr: Annotated[str, typer.Option("--master-addr", help="Address of node 0.")] = "127.0.0.1",
    master_port: Annotated[int, typer.Option("--master-port", help="Port on node 0.")] = 29500,
    hostfile: Annotated[Path | None, typer.Option("--hostfile", help="DeepSpeed hostfile.")] = None,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="ddp, deepspeed or fsdp2 (default: deepspeed with its launcher)."),
    ] = None,
    zero_stage: Annotated[int, typer.Option("--zero-stage", help="DeepSpeed ZeRO stage (1, 2 or 3).")] = 2,
    offload_optimizer: Annotated[
        bool, typer.Option("--offload-optimizer", help="DeepSpeed: optimizer states in CPU memory.")
    ] = False,
    deepspeed_config: Annotated[
        Path | None,
        typer.Option("--deepspeed-config", help="A DeepSpeed JSON merged over the generated one."),
    ] = None,
    compile: Annotated[
        bool,
        typer.Option("--compile", help="torch.compile the LM and tower (compile=true; eager if it fails)."),
    ] = False,
) -> None:
    """Train a VLM through all phases of a preset, a config file or an experiment (F4), on 1..N processes."""
    from tbi_train.cli._progress import RichProgress
    from tbi_train.config import config_hash, resolve_config
    from tbi_train.scale.engines import EngineConfig
    from tbi_train.scale.launch import LaunchConfig, launch_training
    from tbi_train.train import train as run_training

    console = Console()
    extra = list(overrides or [])
    if config is not None and "=" in config:
        extra.insert(0, config)
        config = None
    if trust_remote_code:
        extra.append("model.lm.trust_remote_code=true")
    if compile:
        extra.append("compile=true")
    if config is not None and _is_experiment(config):
        _run_one_experiment(console, config, preset, seed, out, extra)
        return
    try:
        cfg = resolve_config(config, preset=preset, overrides=extra, seed=seed)
        run_dir = out or Path("runs") / f"{cfg.name}-seed{cfg.seed}"
        console.print(f"run [bold]{cfg.name}[/] config {config_hash(cfg)} -> {run_dir}", highlight=False)
        launch = LaunchConfig(launcher, nproc, nodes, node_rank, master_addr, master_port,
                              str(hostfile) if hostfile else None)  # fmt: skip
        engine_cfg = EngineConfig(
            engine or ("deepspeed" if launcher == "deepspeed" else "ddp"),
            zero_stage,
            offload_optimizer,
            str(deepspeed_config) if deepspeed_config else None,
        )
        if launch.launcher == "none":
            with RichProgress(console) as progress:
                result = run_training(cfg, run_dir, resume=resume, callback=progress, engine=engine_cfg)
        else:
            result = launch_training(cfg, run_dir, launch, engine_cfg, resume=resume)
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
    With `--search lambda_en=0.3:0.7:0.1 [--search density=0.1,0.3] --eval VAL` (saved VLM folders): a grid
    search scored on VAL, see tbi_train.strategies.merge_search.
    """
    from tbi_merging.cli import main as merging_main

    if any(a == "--search" or a.startswith("--search=") for a in ctx.args):
        _merge_search(list(ctx.args))
        return
    raise typer.Exit(merging_main(list(ctx.args), prog="tbi merge"))


def _merge_search(argv: list[str]) -> None:
    """`tbi merge --search ...`: run the grid, print the table, name the outputs."""
    from tbi_train.strategies.merge_search import merge_search, search_from_argv

    console = Console()
    try:
        search = search_from_argv(argv)
        with console.status("merge search") as status:
            result = merge_search(
                search, on_row=lambda r: status.update(f"candidate {r['candidate']} scored")
            )
    except TrainError as exc:
        _fail(console, exc)
    import json

    data = json.loads(result.read_text())
    columns = [k for k in data["rows"][0] if k != "candidate"]
    table = Table("#", *columns, title="merge search (best marked *)")
    for row in data["rows"]:
        mark = "*" if row["candidate"] == data["best"]["candidate"] else ""
        table.add_row(f"{row['candidate']}{mark}", *(f"{row.get(c, float('nan')):.4f}" for c in columns))
    console.print(table)
    console.print(f"table: {result}; best model: {data['best_model']}", highlight=False)


experiments_app = typer.Typer(no_args_is_help=True, help="The seeds' experiments as data.")
app.add_typer(experiments_app, name="experiments")


@experiments_app.command("list")
def experiments_list(
    suite: Annotated[
        str | None, typer.Argument(help="tbi-mllm, internvit-next, cmba, foveated, ko-video-caption.")
    ] = None,
) -> None:
    """Show the experiments of one suite (or all) as the seed's ablation table."""
    from tbi_train.experiments import list_experiments

    console = Console()
    try:
        console.print(list_experiments(suite))
    except TrainError as exc:
        _fail(console, exc)


@experiments_app.command("show")
def experiments_show(
    experiment: Annotated[str, typer.Argument(help="An experiment id (F4) or SUITE/ID (foveated/A1).")],
    preset: Annotated[str | None, typer.Option("--preset", help="Resolve against this preset.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for the phase keys.")] = None,
) -> None:
    """Print the fully resolved config of an experiment and which phases it shares with others."""
    from tbi_train.experiments import show_experiment

    console = Console()
    try:
        console.print(show_experiment(experiment, preset, seed), highlight=False)
    except TrainError as exc:
        _fail(console, exc)


@app.command()
def ablate(
    suite: Annotated[str, typer.Argument(help="The suite to run, e.g. tbi-mllm.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides for every run.")] = None,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma-separated seeds (default: the suite's first).")
    ] = None,
    only: Annotated[
        str | None, typer.Option("--only", help="Comma-separated experiment ids, e.g. B3,C2.")
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Model preset, e.g. tiny.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Runs folder; finished runs in it are skipped.")] = Path(
        "runs"
    ),
    benchmark: Annotated[
        list[str] | None,
        typer.Option("--benchmark", help="NAME=PATH of an official benchmark file to evaluate on."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Only the first N samples of each benchmark.")
    ] = None,
    profile: Annotated[
        bool, typer.Option("--profile", help="Profile each experiment into OUT/profile/SUITE/ID.json.")
    ] = False,
    profile_resolutions: Annotated[
        str, typer.Option("--profile-resolutions", help="Comma-separated sides for --profile.")
    ] = "448,896",
) -> None:
    """Run a suite in the seed's critical-path order, reusing shared phases, then write its report."""
    from tbi_train.run import SuiteProgress
    from tbi_train.run import ablate as run_ablation

    console = Console()
    benchmarks = _key_values(benchmark, "--benchmark")
    only_ids = [x.strip() for x in only.split(",")] if only else None
    try:
        with SuiteProgress(console) as view:
            statuses = run_ablation(suite, _seed_list(seeds), only_ids, preset, out, list(overrides or []),
                                    on_event=view, benchmarks=benchmarks or None, limit=limit,
                                    profile=_int_list(profile_resolutions, "--profile-resolutions") if profile else None)  # fmt: skip
    except TrainError as exc:
        _fail(console, exc)
    table = Table("run", "status")
    for run, status in statuses.items():
        table.add_row(run, status)
    console.print(table)
    console.print(f"report: {out / 'report' / 'report.html'}", highlight=False)


@app.command()
def plan(
    target: Annotated[
        str, typer.Argument(help="A suite (GPU-days and reuse) or, with --hardware, a model config.")
    ],
    hardware: Annotated[
        str | None,
        typer.Option("--hardware", help="GPUs to plan memory for, e.g. 2xA100-40GB or 2x8xH100-80GB."),
    ] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", help="LM sequence length (with --hardware).")] = 2048,
    tiles: Annotated[int, typer.Option("--tiles", help="Image tiles per sample (with --hardware).")] = 13,
    preset: Annotated[str | None, typer.Option("--preset", help="Preset for a suite plan.")] = None,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma-separated seeds for a suite plan.")
    ] = None,
) -> None:
    """Before anything runs: a suite's runs, reused phases and GPU-days; or a model's memory per GPU."""
    console = Console()
    try:
        if hardware is None:
            from tbi_train.experiments import plan_suite

            console.print(plan_suite(target, preset, _seed_list(seeds)))
            return
        from tbi_train.scale.plan import hardware_plan

        result = hardware_plan(target, hardware, seq_len=seq_len, tiles=tiles)
        console.print(result.text, markup=False, highlight=False)
    except TrainError as exc:
        _fail(console, exc)


@app.command()
def report(
    runs_dir: Annotated[Path, typer.Argument(help="A runs folder written by tbi ablate / tbi train ID.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Report folder (default RUNS_DIR/report).")
    ] = None,
) -> None:
    """Results table, significance tests, success criteria, plots and one HTML page for a runs folder."""
    from tbi_train.report import write_report

    console = Console()
    try:
        folder = write_report(runs_dir, out)
    except TrainError as exc:
        _fail(console, exc)
    console.print(f"report: {folder / 'report.html'}", highlight=False)


@app.command("eval")
def evaluate(
    model: Annotated[Path, typer.Argument(help="A saved VLM folder, or a run folder.")],
    benchmark: Annotated[
        list[str], typer.Option("--benchmark", help="NAME=PATH of a benchmark file in its official format.")
    ],
    out: Annotated[Path | None, typer.Option("--out", help="Folder for predictions and scores.")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Only the first N samples of each benchmark.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Seed 000: 512.")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    image_root: Annotated[
        Path | None, typer.Option("--image-root", help="Folder image paths are relative to.")
    ] = None,
    compat: Annotated[
        str, typer.Option("--compat", help="Scorer mode: official, lmms or vlmeval.")
    ] = "official",
    mode: Annotated[
        list[str] | None,
        typer.Option(
            "--mode", help="Foveated models: coarse, coarse_fine or autoregressive (repeat for several)."
        ),
    ] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the LM and tower.")] = False,
) -> None:
    """Answer benchmark files with a trained VLM (greedy) and score them through tbi-evalbench."""
    from tbi_train.run import evaluate_benchmarks

    console = Console()
    benchmarks = _key_values(benchmark, "--benchmark")
    try:
        if mode or compile:
            from tbi_train.eval.modes import evaluate_modes

            modes = tuple(m.strip() for entry in mode or [] for m in entry.split(",") if m.strip())
            scores = evaluate_modes(model, benchmarks, out or model / "eval", modes, limit, max_new_tokens,
                                    batch_size, image_root, compat, compile=compile)  # fmt: skip
            _print_modes(console, scores)
        else:
            scores = evaluate_benchmarks(model, benchmarks, out or model / "eval", limit, max_new_tokens,
                                         batch_size, image_root, compat)  # fmt: skip
    except TrainError as exc:
        _fail(console, exc)
    console.print(f"scores: {scores}", highlight=False)


def _print_modes(console: Console, summary: Path) -> None:
    """The per-mode scores of `tbi eval --mode` as one table (benchmarks x modes)."""
    import json

    data = json.loads(summary.read_text())
    names = sorted({b for scores in data.values() for b in scores})
    table = Table("benchmark", *data, title="scores per evaluation mode")
    for name in names:
        table.add_row(name, *(f"{data[m][name]['score']:.4f}" if name in data[m] else "-" for m in data))
    console.print(table)


@app.command()
def profile(
    target: Annotated[
        str, typer.Argument(help="An experiment id (internvit-next/A2) or a saved VLM folder.")
    ],
    resolutions: Annotated[
        str, typer.Option("--resolutions", help="Comma-separated image sides in pixels.")
    ] = "448,896,1344,1792",
    memory_budget: Annotated[
        float | None, typer.Option("--memory-budget", help="GiB; find the largest side that fits.")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Compare with this target (default: the vanilla tower).")
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Model preset, e.g. tiny.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per point (median).")] = 3,
    csv: Annotated[Path | None, typer.Option("--csv", help="Also write the rows as CSV.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the whole profile as JSON.")
    ] = None,
) -> None:
    """FLOPs, visual tokens, peak memory and latency per resolution; seed 001's efficiency criteria."""
    import json

    from tbi_train.eval.profile import profile_efficiency

    console = Console()
    try:
        sides = tuple(int(x) for x in resolutions.split(",") if x.strip())
    except ValueError as err:
        raise typer.BadParameter(
            f"{resolutions!r}: write sides like 448,896", param_hint="--resolutions"
        ) from err
    try:
        result = profile_efficiency(target, sides, memory_budget_gb=memory_budget, baseline=baseline,
                                    preset=preset, repeats=repeats)  # fmt: skip
    except TrainError as exc:
        _fail(console, exc)
    console.print(result.table())
    console.print(result.criteria_table())
    if csv is not None:
        result.write_csv(csv)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)  # e.g. RUNS/profile/SUITE/, read by tbi report
        json_out.write_text(json.dumps(result.to_dict(), indent=2))


def _int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise typer.BadParameter(f"{text!r}: write integers like 0,3", param_hint=option) from err


@app.command()
def maps(
    target: Annotated[Path, typer.Argument(help="A run folder or a saved VLM folder.")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default TARGET/maps).")] = None,
    samples: Annotated[int, typer.Option("--samples", help="Validation samples to map.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample choice.")] = 0,
    layers: Annotated[
        str | None, typer.Option("--layers", help="Tower layers, e.g. 0,3 (default: first, middle, last).")
    ] = None,
    heads: Annotated[
        str | None, typer.Option("--heads", help="Heads to keep, e.g. 0,1 (default: all).")
    ] = None,
    query_patch: Annotated[
        str | None, typer.Option("--query-patch", help="ROW,COL of the query patch drawn (default: centre).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Validation JSON (default: the run's validation split).")
    ] = None,
    image_root: Annotated[Path | None, typer.Option("--image-root")] = None,
) -> None:
    """Attention and token maps (tower, projector, kept tokens) on seeded validation samples: arrays + PNGs."""
    from tbi_train.eval.maps import make_maps

    console = Console()
    query = _int_list(query_patch, "--query-patch")
    if query is not None and len(query) != 2:
        raise typer.BadParameter(f"{query_patch!r}: write ROW,COL", param_hint="--query-patch")
    try:
        folder = make_maps(target, out, samples, seed, _int_list(layers, "--layers"), _int_list(heads, "--heads"),
                           data, tuple(query) if query else None, image_root)  # fmt: skip
    except TrainError as exc:
        _fail(console, exc)
    console.print(f"maps: {folder}", highlight=False)


def main() -> None:
    app()
