"""The `tbi` command line: Typer commands only; each parses, calls one function and prints."""

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="TBI toolkit: bilingual VLM experiments.")


@app.callback()
def _root() -> None:
    """Build, train, merge and evaluate bilingual (Korean + English) vision-language models."""


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


def main() -> None:
    app()
