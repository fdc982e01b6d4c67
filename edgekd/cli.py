"""The `edgekd` command: a thin shim that parses, loads the recipe and calls the Python API."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from edgekd.errors import EdgekdError
from edgekd.native_log import NativeLogFilter

# TensorFlow's C++ start-up chatter hides the messages users need; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf.function retracing notes fire once per loaded model (the gated ensemble loads several).
logging.getLogger("tensorflow").setLevel(logging.ERROR)


class _Group(click.Group):
    """Maps user errors to one line on stderr and exit code 2; Ctrl-C to 130."""

    def invoke(self, ctx: click.Context):
        native = NativeLogFilter()
        native.start()
        try:
            return super().invoke(ctx)
        except EdgekdError as exc:
            native.stop()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            native.stop()
            click.echo("\ninterrupted: run the same command again to resume.", err=True)
            sys.exit(130)
        finally:
            native.stop()


@click.group(cls=_Group)
@click.version_option(package_name="edgekd")
def main() -> None:
    """Generalist + specialists -> gated ensemble -> distilled student -> edge."""


@main.command()
@click.argument("recipe")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a recipe key, e.g. --set generalist.epochs=3 (repeatable).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory. Defaults to runs/<recipe name>.",
)
@click.option("--quiet", "-q", is_flag=True, help="No per-batch progress bar (one line per epoch).")
def train(recipe: str, overrides: tuple[str, ...], run_dir: str | None, quiet: bool) -> None:
    """Train the stages RECIPE asks for (a YAML file or a built-in name, e.g. smoke)."""
    from edgekd.recipe import load_recipe

    resolved = load_recipe(recipe, overrides)
    from edgekd.pipeline import train as run_train

    run = run_train(resolved, run_dir, verbose=2 if quiet else "auto")
    click.echo(f"run directory: {run.path}   (next: edgekd eval {run.path})")


@main.command(name="eval")
@click.argument("run", type=click.Path())
@click.option(
    "--data",
    "data_spec",
    default=None,
    metavar="SPEC",
    help="Evaluate on folder:PATH / cifar:PATH / tfds:NAME instead of the run's own data.",
)
@click.option(
    "--split",
    type=click.Choice(["val", "test"]),
    default="val",
    show_default=True,
    help="Which split of the run's own data (test only where the source has one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def evaluate(run: str, data_spec: str | None, split: str, as_json: bool) -> None:
    """Overall and per-class accuracy of every model in RUN."""
    from edgekd.evaluate import evaluate_run

    report = evaluate_run(run, data_spec, split)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.tables())


@main.command(name="recipes")
def list_recipes() -> None:
    """List the built-in recipes."""
    from edgekd.recipe import builtin_recipes

    for name, path in builtin_recipes().items():
        click.echo(f"{name:20s} {path}")


if __name__ == "__main__":
    main()
