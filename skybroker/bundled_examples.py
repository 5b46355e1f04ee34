"""The example tasks that ship inside the package, for `broker examples`.

`skybroker/examples` is a link to the checkout's `examples/` (one copy of the files; the wheel and the sdist
hold real files, pyproject.toml's package-data). A `pip install skybroker` has no checkout, so the README's
first command (`broker launch -y examples/hello.yaml`) needs the files copied where the user runs broker:
`broker examples` writes them to ./examples (hello.yaml's `workdir: examples/hello_workdir` is relative to
that directory, as every workdir is). Files already there are never overwritten.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .errors import BrokerError, UsageError


def examples_dir() -> Path:
    return Path(__file__).resolve().parent / "examples"


def example_files() -> list[Path]:
    """The bundled files, relative to examples_dir(), in a stable order (no caches)."""
    root = examples_dir()
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root) for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def copy_examples(parent: str | Path = ".") -> tuple[Path, list[str], list[str]]:
    """Copy the bundled examples into `parent`/examples: (that folder, files copied, files kept because they
    exist)."""
    files = example_files()
    if not files:
        raise BrokerError(f"this installation of skybroker has no bundled examples ({examples_dir()})",
                          "reinstall skybroker (`pip install --force-reinstall skybroker`)")
    out = Path(parent) / "examples"
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory", "move it aside, or pass `--dir` another directory")
    copied, kept = [], []
    try:
        for rel in files:
            target = out / rel
            if target.exists():
                kept.append(str(rel))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(examples_dir() / rel, target)
            copied.append(str(rel))
    except OSError as e:
        raise UsageError(f"cannot write the examples to {out}: {e.strerror or e}",
                         "pass a directory you can write: `broker examples --dir DIR`") from None
    return out, copied, kept
