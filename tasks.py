"""Front door: ``invoke --list``. Thin: every task lives in ``systemvm/tasks/<area>.py``."""

import importlib
import pkgutil

from invoke import Collection, Task

import systemvm.tasks

ns = Collection()
for info in sorted(pkgutil.iter_modules(systemvm.tasks.__path__), key=lambda m: m.name):
    module = importlib.import_module(f"systemvm.tasks.{info.name}")
    for value in vars(module).values():
        if isinstance(value, Task) and value.__module__ == module.__name__:
            ns.add_task(value)
