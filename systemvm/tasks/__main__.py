"""``python -m systemvm.tasks``: the tasks of ``invoke``, from an installed package (see program.py)."""

from systemvm.tasks.program import main

main()
