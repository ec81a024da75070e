"""The ``memplan`` entry point: the typer app, and one line plus an exit code for every error.

Exit codes: 0 ok, 1 error, 2 usage, 3 budget infeasible. ``--debug`` (anywhere on the command
line) or ``MEMPLAN_DEBUG=1`` shows the traceback instead of the one-line message.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from memplan import __version__
from memplan.errors import AssumptionWarning, MemplanError
from memplan.cli import analyze_cmd, bench_cmd, plan_cmd, profiles_cmd, show_cmd, trial_cmd

# typer may vendor click; reach its exception types through typer's public BadParameter.
_USAGE_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError")
_CLICK_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")

app = typer.Typer(
    name="memplan",
    help="Plan, predict and measure optimizer state under a memory budget.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("analyze")(analyze_cmd.analyze)
app.command("profiles")(profiles_cmd.profiles)
app.command("plan")(plan_cmd.plan)
app.command("show")(show_cmd.show)
app.command("bench")(bench_cmd.bench)
app.command("trial")(trial_cmd.trial)


def _version(value: bool) -> None:
    if value:
        print(f"memplan {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """memplan: which optimizer state can this model afford, and what does it cost?"""


def _show_warning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
    """memplan's assumptions as one ``memplan: note:`` line on stderr; other warnings as Python shows them."""
    if issubclass(category, AssumptionWarning):
        print(f"memplan: note: {' '.join(str(message).split())}", file=sys.stderr)
    else:
        _PYTHON_SHOW_WARNING(message, category, filename, lineno, file, line)


_PYTHON_SHOW_WARNING = warnings.showwarning


def quiet_libraries() -> None:
    """Silence what the libraries memplan imports say that a memplan user cannot act on, on the
    stderr where this command promises one line per error and notes of its own only. Also run in
    the worker processes of ``memplan trial --jobs``."""
    # torchao (through transformers too) logs warnings about optional kernels its build lacks and
    # about torch deprecations it triggers at import (through torch's own pytree logger)
    root = logging.getLogger()
    if not any(isinstance(handler, logging.NullHandler) for handler in root.handlers):
        root.addHandler(logging.NullHandler())   # once, however often main() runs in one process
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    # torchao's quantized optimizer state asks torch.compile's cache for a hash it lacks, once per
    # state class, as a UserWarning
    warnings.filterwarnings("ignore", message=r".*does not implement _stable_hash_for_caching")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return (and, as a console script, exit with) the exit code."""
    quiet_libraries()
    warnings.showwarning = _show_warning
    warnings.simplefilter("always", AssumptionWarning)
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MEMPLAN_DEBUG") == "1"
    args = [arg for arg in args if arg != "--debug"]
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="memplan", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as done:
        code = done.exit_code
    except _USAGE_ERROR as error:
        if debug:
            raise
        _fail(error.format_message())
        code = 2
    except _CLICK_ERROR as error:
        if debug:
            raise
        _fail(error.format_message())
        code = error.exit_code
    except typer.Abort:
        _fail("aborted")
        code = 130
    except MemplanError as error:
        if debug:
            raise
        _fail(str(error))
        code = error.exit_code
    except KeyboardInterrupt:
        _fail("interrupted")
        code = 130
    except BrokenPipeError:
        code = 0
    except Exception as error:  # a bug in memplan: still one line, the traceback on request
        if debug:
            raise
        _fail(f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)")
        code = 1
    if argv is None:
        sys.exit(code)
    return code


def _fail(message: str) -> None:
    text = " ".join(str(message).split())
    print(f"memplan: error: {text}", file=sys.stderr)


if __name__ == "__main__":
    main()
