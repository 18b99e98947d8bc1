"""Task sets for ``backlm eval``: reading the public parquet layouts, rendering, metrics.

Data lives in ``$BACKLM_HOME/data/tasks/<task>/*.parquet`` in the layout of the public
releases (``backlm data download --task arc|mmlu|gsm8k`` fetches them):

============== ===================== ==================================================
task           source                columns used
============== ===================== ==================================================
arc-easy       allenai/ai2_arc        ``id, question, choices{text, label}, answerKey``
arc-challenge  allenai/ai2_arc        same
mmlu           cais/mmlu (all)        ``question, subject, choices (list), answer (int)``
gsm8k          openai/gsm8k (main)    ``question, answer`` (final number after ``#### ``)
============== ===================== ==================================================

Everything here works on reading-order text; :mod:`backlm.evaluation.scoring` turns it into
each direction's token order. Multiple-choice examples are rendered cloze-style as
``Question: …\\nAnswer:`` followed by one choice's text (the way base models are usually
scored). A GSM8K example is the document ``Question: …\\nAnswer: <worked solution>\\n#### N``;
:meth:`GenExample.split` says which part the model is given and which it must write.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backlm.direction import Direction
from backlm.errors import UserError

LM_TASK = "lm"
MULTIPLE_CHOICE = ("arc-easy", "arc-challenge", "mmlu")
GENERATION = ("gsm8k",)
KNOWN_TASKS = (LM_TASK, *MULTIPLE_CHOICE, *GENERATION)
# Which `backlm data download --task X` brings each task's files.
DOWNLOAD_NAME = {"arc-easy": "arc", "arc-challenge": "arc", "mmlu": "mmlu", "gsm8k": "gsm8k"}
ANSWER_MARK = "####"


@dataclass(frozen=True)
class ChoiceExample:
    """One multiple-choice question: ``prompt`` + ``choices[i]`` is a full reading."""

    id: str
    prompt: str
    choices: tuple[str, ...]
    answer: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenExample:
    """One generation example: the document ``beginning + solution``; ``final`` the answer."""

    id: str
    beginning: str
    solution: str
    final: str

    def split(self, order: Direction) -> tuple[str, str]:
        """``(given, written)`` in reading order for a model writing in ``order``.

        Forward: given the question, the model writes the solution. Backward: given the
        ending (``#### N``), the model writes what came before it (DESIGN.md §1).
        """
        if order == Direction.FORWARD:
            return self.beginning, self.solution
        text = self.beginning + self.solution
        cut = text.rfind(ANSWER_MARK)
        return text[cut:], text[:cut]


def parse_tasks(text: str | Sequence[str]) -> list[str]:
    """Task names from a comma list; an unknown name raises :class:`UserError`."""
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if not names:
        raise UserError(f"--tasks is empty: choose from {', '.join(KNOWN_TASKS)}")
    for name in names:
        if name not in KNOWN_TASKS:
            raise UserError(f"unknown task {name!r}: known tasks are {', '.join(KNOWN_TASKS)}")
    return list(dict.fromkeys(names))


def tasks_root() -> Path:
    """Folder holding one sub-folder per task set (``$BACKLM_HOME/data/tasks``)."""
    from backlm.paths import data_root

    return data_root() / "tasks"


def task_files(task: str, root: Path | None = None) -> list[Path]:
    """The parquet files of ``task``; none yet raises a UserError naming the download."""
    folder = (root or tasks_root()) / task
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise UserError(f"task data for {task} is not downloaded (no parquet files in {folder}): "
                        f"run `backlm data download --task {DOWNLOAD_NAME[task]}`")
    return files


def is_downloaded(task: str, root: Path | None = None) -> bool:
    """Whether ``task`` has data on disk."""
    return any(((root or tasks_root()) / task).glob("*.parquet"))


def read_rows(task: str, root: Path | None = None) -> list[dict[str, Any]]:
    """Rows of every parquet file of ``task``, checking the columns the task needs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from backlm.data.datasets import DATASETS

    columns = DATASETS[task].columns
    rows: list[dict[str, Any]] = []
    fix = f"delete it and run `backlm data download --task {DOWNLOAD_NAME[task]}`"
    for path in task_files(task, root):
        try:
            names = pq.ParquetFile(path).schema_arrow.names
            missing = [c for c in columns if c not in names]
            if missing:
                raise UserError(f"{path} lacks column(s) {', '.join(missing)} for {task}; {fix}")
            rows += pq.read_table(path, columns=list(columns)).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}; {fix}") from None
    return rows


def load_task(task: str, limit: int | None = None, root: Path | None = None) -> list[Any]:
    """The first ``limit`` usable examples of ``task`` (rows without a valid answer skipped)."""
    build = {"arc-easy": arc_example, "arc-challenge": arc_example, "mmlu": mmlu_example,
             "gsm8k": gsm8k_example}[task]
    examples = []
    for i, row in enumerate(read_rows(task, root)):
        example = build(row, i)
        if example is not None:
            examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    return examples


def _prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def arc_example(row: dict[str, Any], index: int) -> ChoiceExample | None:
    """An ARC row; its answerKey names one of ``choices.label`` (letters or digits)."""
    choices = row.get("choices") or {}
    texts, labels = list(choices.get("text") or []), [str(x).strip() for x in
                                                       choices.get("label") or []]
    key = str(row.get("answerKey") or "").strip()
    if not texts or len(texts) != len(labels) or key not in labels:
        return None
    return ChoiceExample(str(row.get("id") or index), _prompt(str(row["question"])),
                         tuple(f" {str(t).strip()}" for t in texts), labels.index(key))


def mmlu_example(row: dict[str, Any], index: int) -> ChoiceExample | None:
    """An MMLU row; ``answer`` indexes ``choices``."""
    choices = [str(c).strip() for c in row.get("choices") or []]
    answer = row.get("answer")
    if not choices or not isinstance(answer, int) or not 0 <= answer < len(choices):
        return None
    subject = str(row.get("subject") or "")
    return ChoiceExample(f"{subject}/{index}", _prompt(str(row["question"])),
                         tuple(f" {c}" for c in choices), answer, {"subject": subject})


def gsm8k_example(row: dict[str, Any], index: int) -> GenExample | None:
    """A GSM8K row; the reference answer is the number after the last ``####``."""
    answer = str(row.get("answer") or "").strip()
    if ANSWER_MARK not in answer:
        return None
    final = normalize_number(answer.rsplit(ANSWER_MARK, 1)[1])
    if final is None:
        return None
    return GenExample(str(index), _prompt(str(row["question"])), f" {answer}", final)


# --- metrics --------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-words F1 between two texts (case-folded ``\\w+`` words, as in SQuAD).

    Words, not model tokens, so the score does not depend on the tokenizer.
    """
    pred = Counter(w.lower() for w in _WORD.findall(prediction))
    ref = Counter(w.lower() for w in _WORD.findall(reference))
    if not pred or not ref:
        return float(pred == ref)
    common = sum((pred & ref).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(pred.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def normalize_number(text: str) -> str | None:
    """The first number in ``text`` in a canonical form (no commas, no ``.0``), or None."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = match.group().replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return "0" if value in ("-0", "") else value


def extract_answer(text: str) -> str | None:
    """A generated solution's final answer: the number after its last ``####``, else its
    last number."""
    if ANSWER_MARK in text:
        found = normalize_number(text.rsplit(ANSWER_MARK, 1)[1])
        if found is not None:
            return found
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def numbers_in(text: str) -> set[str]:
    """Every number in ``text``, normalised."""
    return {n for n in (normalize_number(m) for m in _NUMBER.findall(text)) if n is not None}
