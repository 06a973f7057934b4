"""The task collection, and the program that runs it without the repository's ``tasks.py``.

``invoke`` in the repository finds ``tasks.py``, which imports :func:`collection`; an installed package
runs the same tasks as ``systemvm-tasks`` (or ``python -m systemvm.tasks``) from any directory.
"""

from __future__ import annotations

import importlib
import pkgutil

from invoke import Collection, Program, Task

import systemvm
import systemvm.tasks

# Modules of this package that define no tasks (and __main__, which would run the program on import).
NOT_TASKS = frozenset({"__main__", "program"})


def collection() -> Collection:
    """Every ``@task`` of the modules in :mod:`systemvm.tasks`, by module name."""
    ns = Collection()
    for info in sorted(pkgutil.iter_modules(systemvm.tasks.__path__), key=lambda m: m.name):
        if info.name in NOT_TASKS:
            continue
        module = importlib.import_module(f"systemvm.tasks.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Task) and value.__module__ == module.__name__:
                ns.add_task(value)
    return ns


def main() -> None:
    Program(
        namespace=collection(), name="systemvm-tasks", binary="systemvm-tasks", version=systemvm.__version__
    ).run()
