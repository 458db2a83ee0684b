"""How each agent's prompt is built from a task item.

Choice tasks are scored as lm-evaluation-harness does: the raw "Question: …\\nAnswer:"
context, no chat template. Generation tasks use the chat template where the model has one,
and a plain "…\\nAnswer:" ending for base models (Gemma-3-270M).
"""

from __future__ import annotations

from ..models.loaded import LoadedModel
from .tasks import Task, TaskItem


def question_text(task: Task, item: TaskItem) -> str:
    instruction = task.answer_instruction()
    return f"{item.question} {instruction}".strip() if instruction and instruction not in item.question else item.question


def choice_context(item: TaskItem) -> str:
    """What a choice task's choices continue: the benchmark's own zero-shot prompt where it has one
    (oe-eval's), else lm-eval's "Question: …\nAnswer:". Sender and receiver both read it."""
    return item.meta.get("prompt") or f"Question: {item.question}\nAnswer:"


def prompt_size(item: TaskItem) -> int:
    """Characters the item puts in its prompts: a cheap proxy for their tokens, to batch items of like
    length together (a batch runs at its longest prompt's length)."""
    return len(choice_context(item)) + len(item.context) + sum(len(c) for c in item.choices)


def answer_prompt(model: LoadedModel, task: Task, item: TaskItem, context: str = "", note: str = "") -> str:
    """The answering agent's prompt; ``context`` is private information, ``note`` a message/debate turn."""
    if task.scoring == "choice_loglik":
        base = choice_context(item)
        prefix = "\n".join(p for p in (context, note) if p)
        return f"{prefix}\n{base}" if prefix else base
    text = "\n".join(p for p in (context, note, question_text(task, item)) if p)
    return model.format_prompt(text) if model.has_chat_template else f"{text}\nAnswer:"


def sender_prompt(model: LoadedModel, task: Task, item: TaskItem, sender_format: str = "raw") -> str:
    """What A reads before its state is grafted: the private context, or the question itself.

    ``raw`` ends on the content (e.g. the landmark), which is what carries information in AC;
    ``chat`` wraps it in the chat template (its last token is then the assistant header).
    """
    text = item.context.rstrip(".") if task.info_split == "private_context" else (
        choice_context(item) if task.scoring == "choice_loglik" else item.question)
    return model.format_prompt(text) if sender_format == "chat" else text


def message_prompt(model: LoadedModel, item: TaskItem) -> str:
    text = (f"{item.context}\nIn one short sentence, tell your partner the most important fact above.")
    return model.format_prompt(text) if model.has_chat_template else f"{text}\nMessage:"


def debate_note(*other_answers: str) -> str:
    if len(other_answers) == 1:
        return f"Another agent answered: {other_answers[0].strip()}. Consider it, then give your own answer."
    said = "; ".join(a.strip() for a in other_answers)
    return f"Other agents answered: {said}. Consider them, then give your own answer."
