"""memplan's command line: typer commands that parse options, call :mod:`memplan` and render with rich."""
