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
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library warnings and log lines (coremltools, "
                                 "torch, transformers, scikit-learn) and the traceback of an unexpected error."),
) -> None:
    """Benchmark compressed Core ML image-captioning models on iPhones: speed, size, caption quality."""
    from bench.cli._common import configure_output

    configure_output(verbose=verbose)

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
    """Entry point: run the CLI, turning every error into one red line on stderr and an exit code.

    BenchError is the harness speaking (exit 2, or the error's own code); a usage error is click's message on one
    line; OSError is the machine saying no. Anything else is a bug or a library failing on input nobody validated:
    still one line (with -v, the traceback), never a wall of text for a user to decode."""
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
    except typer.TyperException as err:  # click's usage errors (typer carries its own click): one line too
        context = getattr(err, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        _print_error(f"{message}{hint}")
        return getattr(err, "exit_code", 2)
    except Exception as err:  # noqa: BLE001 — the one place that turns the unexpected into one line
        from bench.cli._common import verbose

        if verbose():
            raise
        _print_error(f"unexpected {type(err).__name__}: {err}{_where(err)} — this is a bug in bench; rerun with "
                     "-v for the traceback and please report it")
        return 3
    return 0


def _where(err: BaseException) -> str:
    """The innermost bench frame an unexpected error passed through: where a report should point."""
    import traceback
    from pathlib import Path

    frames = [f for f in traceback.extract_tb(err.__traceback__) if f"{Path('bench')}/" in f.filename
              and "site-packages" not in f.filename]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno})"


def _print_error(message: str) -> None:
    """One red line on stderr: control sequences and line breaks from whatever the message quotes are removed."""
    from bench.cli._common import error_console
    from bench.report.escape import rich as esc

    error_console().print(f"[bold red]error:[/] {esc(' '.join(str(message).split()))}", highlight=False,
                          soft_wrap=True)
