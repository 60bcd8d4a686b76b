"""The `bench` command: parses arguments and calls the library; nothing else lives here.

Each area registers its commands from its own module (bench/cli/<area>.py exposes `register(app)`).
Errors are turned into one line in exactly one place: `main()` below.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="bench",
    help="Benchmark compressed Core ML image-captioning models on iPhones: speed, size, caption quality.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Benchmark compressed Core ML image-captioning models on iPhones: speed, size, caption quality."""

# Order follows the pipeline: data -> train -> build -> eval -> deploy -> run -> report.
AREAS = ("data", "train", "models", "evaluate", "devices", "run", "lab", "report")


@app.command("version")
def version_command() -> None:
    """Show the harness version, its git commit and the versions of the libraries it pins."""
    from bench.cli._common import console
    from bench.store.environment import git_commit, package_versions
    from bench import __version__

    commit = git_commit()
    console().print(f"bench {__version__} (commit {commit['commit'] or 'unknown'}{', dirty' if commit['dirty'] else ''})")
    for name, version in package_versions().items():
        console().print(f"  {name} {version or 'not installed'}")


def _register_areas() -> None:
    for area in AREAS:
        try:
            module = importlib.import_module(f"bench.cli.{area}")
        except ModuleNotFoundError as err:
            if err.name == f"bench.cli.{area}":
                continue  # area not built yet
            raise
        module.register(app)


_register_areas()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning every BenchError into one red line and exit code 2."""
    from bench.errors import BenchError

    try:
        # With standalone_mode=False click returns typer.Exit's code instead of raising it.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            return code
    except BenchError as err:
        _print_error(str(err))
        return err.exit_code
    except KeyboardInterrupt:
        _print_error("interrupted; anything written so far is complete or was discarded (runs can be resumed)")
        return 130
    except OSError as err:  # the machine said no (disk full, permission, read-only folder): one line, not a traceback
        where = f": {err.filename}" if err.filename else ""
        _print_error(f"{err.strerror or err}{where}")
        return 1
    except typer.Exit as done:
        return done.exit_code
    except SystemExit as done:
        return int(done.code or 0)
    except typer.Abort:
        _print_error("aborted")
        return 130
    except typer.TyperException as err:  # usage errors: typer prints them itself
        show = getattr(err, "show", None)
        if show is None:
            raise
        show()
        return getattr(err, "exit_code", 2)
    return 0


def _print_error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)

