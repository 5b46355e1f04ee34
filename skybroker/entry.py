"""The `broker` console script ([project.scripts] in pyproject.toml).

It imports the CLI inside a try: a Ctrl-C in the first fraction of a second lands in `import click` (or
rich, yaml) at the top of cli.py, before cli.main's own handler exists, and would print a Python
traceback. Here it exits 130 with one line, as everywhere else (README: no traceback without --debug).
Only the standard library's already-loaded `sys` is imported before the try. `python -m skybroker.cli`
keeps working (it runs cli.main directly).
"""
import sys


def _interrupted() -> None:
    sys.stderr.write("Interrupted.\n")
    sys.exit(130)


def main(argv=None) -> None:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        _interrupted()
    try:
        cli_main(argv)
    except KeyboardInterrupt:  # before cli.main's own handler is in place (its first lines)
        _interrupted()


if __name__ == "__main__":
    main()
