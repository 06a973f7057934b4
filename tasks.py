"""Front door: ``invoke --list``. Thin: every task lives in ``systemvm/tasks/<area>.py``; an installed
package runs the same collection as ``systemvm-tasks`` (systemvm/tasks/program.py)."""

from systemvm.tasks.program import collection

ns = collection()
