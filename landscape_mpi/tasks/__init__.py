"""What a grid point evaluates: the task interface (`Task`) and the built-in tasks, chosen in one place.

``make_task(name, loss)``: ``classify`` (the default: logits against class labels, --loss ce|mse), ``lm``
(causal language modelling), ``regress`` (real-valued targets), or ``package.module:factory`` (a user task:
``factory()`` returns a Task). docs/method.md#tasks gives the formulas, docs/usage.md#tasks the options.
"""

from __future__ import annotations

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.imports import import_object
from landscape_mpi.tasks.base import Task, add_sums, call_model, has_own_forward, model_output
from landscape_mpi.tasks.classify import ClassifyTask
from landscape_mpi.tasks.lm import LanguageModelTask
from landscape_mpi.tasks.regress import RegressTask

__all__ = ["Task", "ClassifyTask", "LanguageModelTask", "RegressTask", "make_task", "as_task", "is_classify",
           "call_model", "model_output", "add_sums", "has_own_forward"]

#: The members every task has (a user task is checked for them).
MEMBERS = ("name", "metrics", "to_device", "forward", "loss_sum", "count", "batch_sums", "finish", "check")


def make_task(name: str = "classify", loss: str = "ce") -> Task:
    """The task of ``--task NAME`` (`loss`: classify's --loss)."""
    if name == "classify":
        return ClassifyTask(loss)
    if name == "lm":
        return LanguageModelTask()
    if name == "regress":
        return RegressTask()
    if ":" not in name:
        raise UserError(f"--task {name}: choose classify, lm, regress or package.module:factory")
    factory = import_object(name, "--task")
    try:
        task = factory()
    except Exception as exc:  # noqa: BLE001  (the user's factory: report it in one line)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"--task {name}: factory() fails ({first})") from None
    missing = [m for m in MEMBERS if not hasattr(task, m)]
    if missing:
        raise UserError(f"--task {name}: factory() returned {type(task).__name__} without {', '.join(missing)}; "
                        f"return a landscape_mpi.tasks.Task")
    metrics = tuple(task.metrics)
    if not metrics or metrics[0] != "loss" or len(set(metrics)) != len(metrics):
        raise UserError(f"--task {name}: metrics {metrics!r} must be distinct names, the first one 'loss'")
    return task


def as_task(task: "Task | str") -> Task:
    """A Task as it is; a loss name (ce, mse) as the classify task with that loss (the engines' and the
    Hessian's callers that predate tasks pass one)."""
    return ClassifyTask(task) if isinstance(task, str) else task


def is_classify(task: Task) -> bool:
    """Whether `task` is the built-in classify task (the fast engines are written for it)."""
    return isinstance(task, ClassifyTask)
