"""The held-out table: how often a chat model answers each family's held-out prompts right, and how two
models compare prompt by prompt.

- `score(examples, replies)` -> dict of the table's rows (fractions 0..1); `row_hits` gives the same per
  prompt, and `paired_change(before, after, row)` compares two models on the same prompts;
- `evaluate_chat(model, tokenizer, examples)` generates the replies and scores them;
- `table_rows()` lists the table's rows: one per family of `tasks.TASKS`, plus `format` (every reply ends its
  turn and never writes another role's) and `system_style` (the form a system prompt asks for, alone);
- `few_shot_prompt(example, shots)`: a plain-text Q/A prompt for a model that never saw the chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .chat import Reply, generate_replies
from .tasks import TASKS, Example, check, refused, style_ok, task_of

FORMAT_ROW = "format"
STYLE_ROW = "system_style"
EXTRA_ROWS = {
    FORMAT_ROW: ("format: ends its turn, never writes another role", 0.99),
    STYLE_ROW: ("system prompt: form followed", 0.95),
}  # row -> (label, target): the two rows that are not families


def table_rows() -> dict[str, str]:
    """The held-out table's rows in order, with their labels: the format, then each family's row (a family
    that also checks a system prompt's form comes after a row of the form alone)."""
    out = {FORMAT_ROW: EXTRA_ROWS[FORMAT_ROW][0]}
    for task in TASKS.values():
        if task.form_row:
            out[STYLE_ROW] = EXTRA_ROWS[STYLE_ROW][0]
        out[task.name] = task.row
    return out


def target(row: str) -> float | None:
    """A row's target (None: the row has none)."""
    return EXTRA_ROWS[row][1] if row in EXTRA_ROWS else task_of(row).target


def lower_is_better(row: str) -> bool:
    """Whether a lower value of `row` is better (the rate of refused safe requests)."""
    return row not in EXTRA_ROWS and task_of(row).lower_is_better


def row_hits(examples: Sequence[Example], replies: Sequence[Reply | str]) -> dict[str, list[bool]]:
    """For each row of the held-out table, one bool per prompt it counts: right (for a refusal row: refused)."""
    if len(examples) != len(replies):
        raise ValueError(f"{len(examples)} examples but {len(replies)} replies")
    hits: dict[str, list[bool]] = {}
    for example, rep in zip(examples, replies, strict=True):
        text = rep.text if isinstance(rep, Reply) else rep
        if isinstance(rep, Reply):
            hits.setdefault(FORMAT_ROW, []).append(rep.ended and not rep.role_break)
        task = task_of(example.family)
        hits.setdefault(task.name, []).append(refused(text) if task.counts_refusals else check(example, text))
        if task.form_row:
            hits.setdefault(STYLE_ROW, []).append(style_ok(example, text.strip()))
    return {row: hits[row] for row in table_rows() if row in hits}


def score(examples: Sequence[Example], replies: Sequence[Reply | str]) -> dict[str, float]:
    """The held-out table: for each row present, a fraction (accuracy, or a refusal rate for refusals)."""
    return {row: sum(h) / len(h) for row, h in row_hits(examples, replies).items()}


@dataclass
class Change:
    """How a second model does against a first on the same prompts of one row, prompt by prompt.

    `gained`: prompts the second gets right and the first did not (for a refusal row of safe requests:
    no longer refused); `lost`: the other way round. `points` is the change of the row's score in the
    better direction; `margin` the half-width of its 95% interval (normal approximation to the paired
    difference): a change smaller than its margin is within what redrawing the prompts could give.
    """

    row: str
    n: int
    gained: int
    lost: int

    @property
    def points(self) -> float:
        return (self.gained - self.lost) / self.n

    @property
    def margin(self) -> float:
        variance = (self.gained + self.lost) / self.n - self.points**2
        return 1.96 * (max(variance, 0.0) / self.n) ** 0.5

    def __str__(self) -> str:
        return (
            f"{self.points:+.1%} ({self.gained} gained, {self.lost} lost of {self.n} prompts; "
            f"95% interval +/-{self.margin:.1%})"
        )


def mean_difference(before: Sequence[float], after: Sequence[float]) -> tuple[float, float]:
    """Mean of `after - before` over paired values (two models' scores on the same prompts), and the
    half-width of its 95% interval (normal approximation)."""
    if len(before) != len(after) or not before:
        raise ValueError(f"need equally many paired values, got {len(before)} and {len(after)}")
    d = [y - x for x, y in zip(before, after, strict=True)]
    mean = sum(d) / len(d)
    variance = sum((x - mean) ** 2 for x in d) / max(1, len(d) - 1)
    return mean, 1.96 * (variance / len(d)) ** 0.5


def paired_change(before: dict[str, list[bool]], after: dict[str, list[bool]], row: str) -> Change:
    """`Change` of `row` from `before` to `after`, two `row_hits` results on the same prompts."""
    a, b = before[row], after[row]
    if len(a) != len(b):
        raise ValueError(f"row {row!r}: {len(a)} prompts before but {len(b)} after; score the same prompts")
    if lower_is_better(row):  # a hit is a refusal of a safe request: fewer is better
        a, b = [not x for x in a], [not x for x in b]
    gained = sum(y and not x for x, y in zip(a, b, strict=True))
    lost = sum(x and not y for x, y in zip(a, b, strict=True))
    return Change(row, len(a), gained, lost)


def change_report(before: dict[str, list[bool]], after: dict[str, list[bool]]) -> str:
    """One line per row of the held-out table where any prompt changed between two `row_hits` results."""
    labels = table_rows()
    changes = [paired_change(before, after, row) for row in before if row in after]
    lines = [f"{labels[c.row]:<52}{c}" for c in changes if c.gained or c.lost]
    return "\n".join(lines) if lines else "no prompt's result changed"


def meets_target(row: str, value: float) -> bool | None:
    """Whether a row's value meets its target (None: the row has no target)."""
    goal = target(row)
    if goal is None:
        return None
    return value <= goal if lower_is_better(row) else value >= goal


def format_table(columns: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per row of `table_rows()` present, one column per named result, then the target."""
    names = list(columns)
    labels = table_rows()
    width = max(len(label) for label in labels.values())
    lines = [f"{'held-out prompts':<{width}}  " + "  ".join(f"{n:>9}" for n in names) + "     target"]
    for row, label in labels.items():
        if not any(row in c for c in columns.values()):
            continue
        cells = "  ".join(f"{columns[n][row]:>9.1%}" if row in columns[n] else f"{'':>9}" for n in names)
        goal = target(row)
        mark = "" if goal is None else ("<= " if lower_is_better(row) else ">= ") + f"{goal:.0%}"
        lines.append(f"{label:<{width}}  {cells}  {mark:>9}")
    return "\n".join(lines)


def evaluate_chat(
    model: Any, tokenizer: Any, examples: Sequence[Example], max_new_tokens: int = 96, **options: Any
) -> tuple[dict[str, float], list[Reply]]:
    """Generate an answer to every example (greedy unless `options` say otherwise); the table and the replies."""
    replies = generate_replies(model, tokenizer, [e.messages for e in examples], max_new_tokens, **options)
    return score(examples, replies), replies


def few_shot_prompt(example: Example, shots: Sequence[Example]) -> str:
    """A plain-text prompt: solved examples as 'Q: ...' / 'A: ...' lines, then the question, ending in 'A:'."""
    if len(example.messages) != 1:
        raise ValueError("few-shot prompts take one-question examples (not memory or system ones)")
    lines = [f"Q: {s.messages[-1]['content']}\nA: {s.answer}\n" for s in shots]
    return "".join(lines) + f"Q: {example.messages[-1]['content']}\nA:"
