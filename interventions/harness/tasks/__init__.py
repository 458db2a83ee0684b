"""Task registry of the evaluation harness.

    from interventions.harness.tasks import get_task, available_tasks
    task = get_task("arc_easy")            # or "countries", "gsm8k", "mmlu", "rg/chain_sum", "file", "hf", ...
    items = task.items(n=50, seed=0)       # deterministic for (n, seed)
    task.score(items[0], "generated text") # generation-scored tasks only

Importing this package registers every built-in task; data files are read lazily.
"""

from .base import INFO_SPLITS, SCORINGS, Task
from .errors import DatasetFormatError, MissingDataPackageError, ScoringModeError, TaskOptionError, UnknownTaskError
from .item import TaskItem
from .registry import available_tasks, get_task, register_task
from .scoring import choice_accuracy, exact_match, extract_number, normalize_answer, numeric_match

# imported for their register_task side effects
from . import countries, easy_vqa, jsonl, mmlu, olmo, reasoning_gym_tasks, scenes, tip_sheets, user_data  # noqa: E402,F401  isort: skip

__all__ = [
    "Task", "TaskItem", "SCORINGS", "INFO_SPLITS",
    "register_task", "get_task", "available_tasks",
    "UnknownTaskError", "DatasetFormatError", "MissingDataPackageError", "ScoringModeError", "TaskOptionError",
    "choice_accuracy", "exact_match", "extract_number", "normalize_answer", "numeric_match",
]
