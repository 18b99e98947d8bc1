"""Task sets: reading the public parquet layouts, generation splits and metrics."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backlm.direction import Direction
from backlm.errors import UserError
from backlm.evaluation import tasks
from tests.helpers import write_task_sets


@pytest.fixture
def task_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    write_task_sets(tmp_path / "home" / "data" / "tasks")
    return tmp_path / "home" / "data" / "tasks"


# --- reading the public layouts ---------------------------------------------------------------


def test_arc_rows_with_letter_and_digit_keys(task_home):
    examples = tasks.load_task("arc-easy")
    assert [e.id for e in examples] == ["Mercury_1", "NYSED_2"]  # the bad key is skipped
    first = examples[0]
    assert first.prompt == "Question: Which gas do plants take in?\nAnswer:"
    assert first.choices[1] == " carbon dioxide" and first.answer == 1
    assert examples[1].answer == 2
    assert len(tasks.load_task("arc-easy", limit=1)) == 1


def test_mmlu_and_gsm8k_rows(task_home):
    mmlu = tasks.load_task("mmlu")
    assert mmlu[1].answer == 2 and mmlu[1].extra == {"subject": "high_school_physics"}
    gsm = tasks.load_task("gsm8k")
    assert [g.final for g in gsm] == ["5", "2000"]
    assert gsm[0].beginning.startswith("Question: Tom") and gsm[0].solution.endswith("#### 5")


def test_generation_split_per_direction():
    ex = tasks.GenExample("0", "Question: q\nAnswer:", " work = 5.\n#### 5", "5")
    given, written = ex.split("forward")
    assert (given, written) == ("Question: q\nAnswer:", " work = 5.\n#### 5")
    given, written = ex.split(Direction.BACKWARD)
    assert given == "#### 5" and written == "Question: q\nAnswer: work = 5.\n"
    assert written + given == ex.beginning + ex.solution


def test_missing_task_data_names_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"backlm data download --task arc`"):
        tasks.load_task("arc-challenge")
    assert not tasks.is_downloaded("mmlu")


def test_wrong_columns_is_a_user_error(task_home):
    pq.write_table(pa.table({"text": ["x"]}), task_home / "mmlu" / "test-00000-of-00001.parquet")
    with pytest.raises(UserError, match="lacks column"):
        tasks.load_task("mmlu")


def test_parse_tasks():
    assert tasks.parse_tasks("lm, MMLU,lm") == ["lm", "mmlu"]
    with pytest.raises(UserError, match="known tasks are lm, arc-easy"):
        tasks.parse_tasks("lm,hellaswag")


# --- metrics ----------------------------------------------------------------------------------


def test_token_f1_and_answers():
    assert tasks.token_f1("The cat sat", "the cat sat") == 1.0
    assert tasks.token_f1("cat", "the cat sat") == pytest.approx(0.5)
    assert tasks.token_f1("", "") == 1.0 and tasks.token_f1("dog", "cat") == 0.0
    assert tasks.normalize_number("$1,000.50 total") == "1000.5"
    assert tasks.normalize_number("7.0") == "7"
    assert tasks.extract_answer("so 3 + 4 = 7\n#### 7") == "7"
    assert tasks.extract_answer("it is 12 then 14") == "14"
    assert tasks.extract_answer("no digits") is None
    assert tasks.numbers_in("3 + 2,000 = 2,003") == {"3", "2000", "2003"}
