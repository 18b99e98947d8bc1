"""Task sets: public parquet layouts, direction-aware scoring, metrics and ``--task`` download."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from backlm.cli import app
from backlm.data.datasets import DATASETS, download_task
from backlm.direction import Direction
from backlm.errors import UserError
from backlm.evaluation import scoring, tasks
from tests.conftest import ByteTokenizer

ARC_EASY = [
    {"id": "Mercury_1", "question": "Which gas do plants take in?",
     "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"],
                 "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "NYSED_2", "question": "What melts ice fastest?",
     "choices": {"text": ["shade", "wind", "sunlight"], "label": ["1", "2", "3"]},
     "answerKey": "3"},
    {"id": "Broken_3", "question": "No valid key?",
     "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"},
]
ARC_CHALLENGE = [
    {"id": "Chal_1", "question": "Which is a mammal?",
     "choices": {"text": ["shark", "whale", "trout", "eel"], "label": ["A", "B", "C", "D"]},
     "answerKey": "B"},
]
MMLU = [
    {"question": "What is 2 + 2?", "subject": "elementary_mathematics",
     "choices": ["3", "4", "5", "22"], "answer": 1},
    {"question": "The SI unit of force is the", "subject": "high_school_physics",
     "choices": ["joule", "watt", "newton", "pascal"], "answer": 2},
]
GSM8K = [
    {"question": "Tom has 3 apples and buys 2 more. How many apples does he have?",
     "answer": "Tom has 3 + 2 = <<3+2=5>>5 apples.\n#### 5"},
    {"question": "A farm sells 1,000 eggs a day for 2 days. How many eggs is that?",
     "answer": "It sells 1,000 * 2 = <<1000*2=2000>>2,000 eggs.\n#### 2,000"},
]
# Published sub-paths of each task's test file (what --base-url mirrors must serve).
PUBLISHED = {name: DATASETS[name].filename(0) for name in ("arc-easy", "arc-challenge", "mmlu",
                                                           "gsm8k")}
ROWS = {"arc-easy": ARC_EASY, "arc-challenge": ARC_CHALLENGE, "mmlu": MMLU, "gsm8k": GSM8K}


def write_task_sets(root: Path, published: bool = False) -> None:
    """Write every task's parquet file: under ``root/<task>/`` as ``backlm eval`` reads them,
    or under the published sub-paths (``ARC-Easy/test-…``) as a download mirror serves them."""
    for name, rows in ROWS.items():
        path = root / (PUBLISHED[name] if published else f"{name}/{Path(PUBLISHED[name]).name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)


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


# --- direction-aware scoring ------------------------------------------------------------------


class _Tok(ByteTokenizer):
    def token_byte_lengths(self) -> list[int]:
        return [1] * 256 + [0] * 7


def _loaded(direction: str, seq_len: int = 64) -> SimpleNamespace:
    from backlm.config import ModelConfig
    from backlm.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(depth=1, width=32, head_dim=16, vocab_size=263, seq_len=seq_len))
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # far from uniform: scores differ
    return SimpleNamespace(model=model.eval(), tokenizer=_Tok(), direction=direction,
                           device=torch.device("cpu"))


def _manual(model, seq: list[int], scored: range) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq[:-1]])), dim=-1)[0]
    return sum(float(logp[i - 1, seq[i]]) for i in scored)


EXAMPLE = tasks.ChoiceExample("x", "Question: 2+2?\nAnswer:", (" four", " five", " 22"), 0)


@pytest.mark.parametrize("model_dir, order, head", [
    ("forward", "forward", [256]), ("backward", "forward", [256]),
    ("bidirectional", "forward", [256, 257]),
])
def test_forward_scoring_is_conditional(model_dir, order, head):
    loaded, tok = _loaded(model_dir), _Tok()
    logps, norms = scoring.score_choices(loaded, EXAMPLE, order, tok.token_byte_lengths())
    prompt = tok.encode(EXAMPLE.prompt)
    for choice, lp, norm in zip(EXAMPLE.choices, logps, norms, strict=True):
        ids = tok.encode(choice)
        seq = [*head, *prompt, *ids]
        want = _manual(loaded.model, seq, range(len(seq) - len(ids), len(seq)))
        assert lp == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert norm == pytest.approx(lp / len(ids), rel=1e-6)


@pytest.mark.parametrize("model_dir, head", [
    ("backward", [256]), ("forward", [256]), ("bidirectional", [256, 258]),
])
def test_backward_scoring_is_joint_over_the_reversed_sequence(model_dir, head):
    loaded, tok = _loaded(model_dir), _Tok()
    logps, norms = scoring.score_choices(loaded, EXAMPLE, "backward", tok.token_byte_lengths())
    for choice, lp, norm in zip(EXAMPLE.choices, logps, norms, strict=True):
        body = tok.encode(EXAMPLE.prompt + choice)
        seq = [*head, *reversed(body)]
        # every token is scored except BOS and the (user-chosen) marker
        assert lp == pytest.approx(_manual(loaded.model, seq, range(len(head), len(seq))),
                                   rel=1e-4, abs=1e-4)
        assert norm == pytest.approx(lp / len(body), rel=1e-6)


def test_long_prompts_lose_their_start_equally_for_every_choice():
    assert scoring.fit_prompt(list(range(10)), 3, seq_len=8, head=1) == [5, 6, 7, 8, 9]
    assert scoring.fit_prompt([1, 2], 3, seq_len=8, head=1) == [1, 2]
    loaded = _loaded("forward", seq_len=16)
    ex = tasks.ChoiceExample("y", "Question: " + "long " * 20, (" a", " bbb"), 1)
    logps, _ = scoring.score_choices(loaded, ex, "backward", _Tok().token_byte_lengths())
    assert len(logps) == 2 and all(lp < 0 for lp in logps)


def test_choice_task_summary():
    loaded = _loaded("backward")
    records, summary = scoring.evaluate_choice_task(loaded, [EXAMPLE, EXAMPLE], "backward")
    assert summary["n"] == 2 and summary["scoring"] == "joint" and summary["metric"] == "acc"
    assert 0.0 <= summary["acc"] <= 1.0 and summary["score"] == summary["acc"]
    assert records[0]["pred"] == max(range(3), key=lambda i: records[0]["logprobs"][i])


class _StubModel:
    """Writes a fixed token stream and remembers the prompts it got."""

    cfg = SimpleNamespace(seq_len=64)

    def __init__(self, stream: list[int]) -> None:
        self.stream, self.prompts = stream, []

    def generate(self, tokens, max_new_tokens, temperature=1.0, top_k=None, seed=None):
        self.prompts.append(list(tokens))
        yield from self.stream[:max_new_tokens]


GEN = tasks.GenExample("0", "Question: 3+2?\nAnswer:", " 3 + 2 = 5.\n#### 5", "5")


def test_backward_generation_writes_the_earlier_part_in_reading_order():
    tok = _Tok()
    earlier = tok.encode(" 3 + 2 = 5.\n")
    model = _StubModel([*reversed(earlier), 256, 1, 2])  # BOS: the document's start
    loaded = SimpleNamespace(model=model, tokenizer=tok, direction="backward", device=None)
    records, summary = scoring.evaluate_generation_task(loaded, [GEN], "backward", 64)
    assert model.prompts == [[256, *reversed(tok.encode("#### 5"))]]
    assert records[0]["output"] == " 3 + 2 = 5.\n"
    assert records[0]["reference"] == "Question: 3+2?\nAnswer: 3 + 2 = 5.\n"
    assert records[0]["answer_mentioned"] and 0 < records[0]["token_f1"] < 1
    assert summary["metric"] == "token_f1" and summary["answer_mentioned"] == 1.0


def test_forward_generation_exact_match_with_marker():
    tok = _Tok()
    model = _StubModel(tok.encode(" 3 + 2 = 5.\n#### 5") + [256])
    loaded = SimpleNamespace(model=model, tokenizer=tok, direction="bidirectional", device=None)
    records, summary = scoring.evaluate_generation_task(loaded, [GEN], "forward", 64)
    assert model.prompts[0][:2] == [256, 257]  # BOS, <|forward|>
    assert records[0]["exact_match"] and records[0]["token_f1"] == 1.0
    assert summary["exact_match"] == 1.0


# --- download ---------------------------------------------------------------------------------


@pytest.fixture
def mirror(tmp_path):
    """A 127.0.0.1 http.server serving the task files under their published sub-paths."""
    root = tmp_path / "mirror"
    write_task_sets(root, published=True)
    (root / "html").mkdir()
    (root / "html" / "all").mkdir()
    (root / "html" / "all" / "test-00000-of-00001.parquet").write_text("<html>login</html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_cli_download_task_then_load(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    res = CliRunner().invoke(app, ["data", "download", "--task", "arc", "--base-url", mirror])
    assert res.exit_code == 0, res.output
    got = tmp_path / "home" / "data" / "tasks"
    assert (got / "arc-easy" / "test-00000-of-00001.parquet").is_file()
    assert [e.id for e in tasks.load_task("arc-challenge")] == ["Chal_1"]
    again = download_task("arc", got, base_url=mirror)
    assert again.skipped == 2 and again.downloaded == 0
    for name in ("mmlu", "gsm8k"):
        res = CliRunner().invoke(app, ["data", "download", "--task", name, "--base-url", mirror])
        assert res.exit_code == 0, res.output
    assert len(tasks.load_task("gsm8k")) == 2


def test_download_rejects_a_non_parquet_payload(tmp_path, mirror):
    with pytest.raises(UserError, match="not a parquet file with columns question"):
        download_task("mmlu", tmp_path / "t", base_url=f"{mirror}/html", retries=0)
    assert not list((tmp_path / "t").rglob("*.parquet*"))


def test_task_registry_and_errors(tmp_path):
    assert DATASETS["arc-easy"].url(0) == ("https://huggingface.co/datasets/allenai/ai2_arc/"
                                           "resolve/main/ARC-Easy/test-00000-of-00001.parquet")
    assert DATASETS["gsm8k"].url(0).endswith("/openai/gsm8k/resolve/main/main/"
                                             "test-00000-of-00001.parquet")
    assert DATASETS["mmlu"].url(0).endswith("/cais/mmlu/resolve/main/all/"
                                            "test-00000-of-00001.parquet")
    with pytest.raises(UserError, match="choose one of arc, mmlu, gsm8k"):
        download_task("hellaswag", tmp_path)
    res = CliRunner().invoke(app, ["data", "download", "arc-easy"])
    assert res.exit_code == 2 and "--task arc" in res.output
