"""lm-evaluation-harness's ``local-completions`` against ``backlm serve``, checked against
``backlm eval`` on the same multiple-choice items.

A served model (on 127.0.0.1, a free port) is scored by the harness through
``/v1/completions`` (echo, ``max_tokens`` 1, ``logprobs`` 1) with the server's own tokenizer
(``tokenizer_backend=remote``: the harness reads ``/tokenizer_info`` and ``/tokenize``, as it
does with vLLM, and sends token ids). The same items, written as ARC parquet, go through the
code ``backlm eval`` runs (``load_task`` → ``evaluate_choice_task``, forward: the conditional
score). Prints both accuracies and the largest per-choice log-likelihood gap. Nothing reaches
the network (HF_DATASETS_OFFLINE, HF_HUB_OFFLINE).

    python benchmarks/lm_eval_completions.py --model f0 [--task-dir benchmarks/lm_eval]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# the one local task both harness routes use (benchmarks/lm_eval_hf.py runs the hf model)
TASK_DIR = ROOT / "benchmarks" / "lm_eval"
TASK = "backlm_arc_local"


def serve_in_thread(loaded: Any) -> tuple[str, Any]:
    """``loaded`` behind ``backlm serve``'s app on 127.0.0.1; (url, server)."""
    import uvicorn

    from backlm.serve import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(loaded), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server


def harness(url: str, model: str, max_length: int, task_dir: Path) -> tuple[dict, list]:
    """The harness's acc and acc_norm and, per item (in file order), each choice's log-likelihood."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    args = (f"model={model},base_url={url}/v1/completions,tokenizer_backend=remote,"
            f"tokenized_requests=True,max_length={max_length},num_concurrent=1,max_retries=1")
    out = simple_evaluate(model="local-completions", model_args=args, tasks=[TASK],
                          task_manager=TaskManager(include_path=str(task_dir)),
                          log_samples=True, num_fewshot=0)
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    metrics = out["results"][TASK]
    return {"acc": float(metrics["acc,none"]), "acc_norm": float(metrics["acc_norm,none"])}, lls


def backlm_eval(loaded: Any, task_dir: Path, home: Path) -> tuple[dict, list]:
    """``backlm eval``'s forward multiple-choice scoring of the same items, read as ARC
    parquet from ``home/tasks/arc-easy`` (what ``backlm data download --task arc`` leaves)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from backlm.direction import Direction
    from backlm.evaluation.scoring import evaluate_choice_task
    from backlm.evaluation.tasks import load_task

    rows = [json.loads(line) for line in (task_dir / "arc_local.jsonl").read_text().splitlines()
            if line]
    folder = home / "arc-easy"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "test-00000-of-00001.parquet")
    records, summary = evaluate_choice_task(loaded, load_task("arc-easy", root=home),
                                            Direction.FORWARD)
    return {"acc": summary["acc"], "acc_norm": summary["acc_norm"]}, [r["logprobs"] for r in records]


def compare(model: str, task_dir: Path = TASK_DIR) -> dict[str, Any]:
    """Both scorings of ``task_dir``'s items with the served ``model``."""
    from backlm.experiment.loading import load_model

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    loaded = load_model(model, device="cpu")
    url, server = serve_in_thread(loaded)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ.setdefault("HF_DATASETS_CACHE", str(Path(tmp) / "hf"))
            # the prompt with <|bos|> and the one token the harness asks for fit the context
            acc_h, ll_h = harness(url, model, loaded.model.cfg.seq_len - 1, task_dir)
            acc_b, ll_b = backlm_eval(loaded, task_dir, Path(tmp) / "tasks")
    finally:
        server.should_exit = True
    gap = max(abs(a - b) for ra, rb in zip(ll_h, ll_b, strict=True)
              for a, b in zip(ra, rb, strict=True))
    return {"model": model, "items": len(ll_b), "harness_scores": acc_h, "backlm_scores": acc_b,
            "max_abs_loglik_gap": gap, "harness": ll_h, "backlm": ll_b}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="experiment id or tag (forward)")
    parser.add_argument("--task-dir", type=Path, default=TASK_DIR)
    args = parser.parse_args()
    os.chdir(ROOT)  # the task YAML names its data relative to the repository root
    out = compare(args.model, args.task_dir)
    print(json.dumps({k: v for k, v in out.items() if k not in ("harness", "backlm")},
                     indent=2))


if __name__ == "__main__":
    main()
