"""`jsonl`: the ``file`` task on a JSON-lines file whose keys are the roles' own names.

Keys: question (str), answer (str or number), optional id, context (str), choices (list of str;
the answer is one of them, or its letter), meta (object). Task name ``jsonl/<stem>`` and item ids
``<stem>/<id or line number>``, as before it became an alias, so finished work keys still match.
"""

from __future__ import annotations

from .registry import register_task
from .user_data import UserDataTask, file_task


@register_task("jsonl")
def jsonl_task(path: str, scoring: str | None = None, name: str | None = None) -> UserDataTask:
    return file_task(path, format="jsonl", scoring=scoring, name=name)
