"""Direction-aware scoring of task examples with a loaded model (DESIGN.md §1).

Examples are tokenized in reading order, then put in the evaluated order with
:func:`backlm.direction.encode_document`; nothing here reverses tokens by hand.

Multiple choice:

- forward: the usual conditional score, the summed log-probability of the choice's tokens
  given ``BOS [marker] question``. ``per_byte`` divides it by the choice's UTF-8 bytes.
- backward: question + choice are rendered in reading order, reversed, and each choice is
  scored by the log-likelihood of the whole reversed sequence (joint likelihood): the choice
  now comes first, so a conditional score would ignore the question. ``per_byte`` divides by
  the bytes of the whole sequence.

When a rendering is longer than the model's ``seq_len`` the question loses its reading-order
start, by the same number of tokens for every choice, so choices stay comparable.

Generation (GSM8K): the model is given one part of the document in the evaluated order and
greedily writes the other (forward: the solution after the question; backward: what came
before the ending ``#### N``) until it emits a special token or reaches ``max_new_tokens``.
The written tokens are turned back into reading order before anything is compared:

- ``token_f1``: word F1 of the written text against the reference part the model had to
  write, cut to the same ``max_new_tokens`` tokens nearest the given part (comparable in both
  directions; the score used for the direction gap);
- forward ``exact_match``: the written solution's final answer equals the reference number;
- backward ``answer_mentioned``: the written earlier part contains the final number (the
  worked solution ends by computing it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from backlm.callbacks import Progress
from backlm.direction import Direction, encode_for, model_order, prefix_length
from backlm.evaluation.tasks import ChoiceExample, GenExample, extract_answer, numbers_in, token_f1
from backlm.missing import is_missing, mean_or_missing


def sequence_logprobs(model: Any, seqs: Sequence[Sequence[int]],
                      masks: Sequence[Sequence[bool]], device: Any, pad: int) -> list[float]:
    """Summed log-probability of each model-order sequence's targets where ``mask`` is True
    (``mask[i]`` refers to token ``i``, as :func:`encode_document` gives it), in one batch."""
    import numpy as np
    import torch

    width = max(len(s) for s in seqs) - 1
    x = np.full((len(seqs), width), pad, dtype=np.int64)
    y = np.full((len(seqs), width), -1, dtype=np.int64)
    for b, (seq, mask) in enumerate(zip(seqs, masks, strict=True)):
        s, m = np.asarray(seq, dtype=np.int64), np.asarray(mask, dtype=bool)
        x[b, : len(s) - 1] = s[:-1]
        y[b, : len(s) - 1] = np.where(m[1:], s[1:], -1)
    with torch.inference_mode():
        loss = model(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device),
                     loss_reduction="none")
    return (-loss.float().sum(dim=1)).tolist()


def fit_prompt(prompt: list[int], longest_choice: int, seq_len: int, head: int) -> list[int]:
    """Drop the prompt's reading-order start so head + prompt + the longest choice fit in
    ``seq_len + 1`` tokens (the model sees ``seq_len`` inputs)."""
    budget = max(0, seq_len + 1 - head - longest_choice)
    return prompt[len(prompt) - budget:] if len(prompt) > budget else prompt


def score_choices(loaded: Any, example: ChoiceExample, order: Direction,
                  byte_lengths: Sequence[int]) -> tuple[list[float], list[float]]:
    """``(logprob, per_byte)`` per choice of ``example`` in the concrete ``order``."""
    tok, ids = loaded.tokenizer, loaded.tokenizer.special_ids
    choices = [tok.encode(c) for c in example.choices]
    head = prefix_length(loaded.direction)
    prompt = fit_prompt(tok.encode(example.prompt), max(len(c) for c in choices),
                        loaded.model.cfg.seq_len, head)
    conditional = order == Direction.FORWARD
    seqs, masks, nbytes = [], [], []
    for choice in choices:
        seq, mask = encode_for(prompt + choice, loaded.direction, order, ids)
        if conditional:  # forward: the choice is the tail of the sequence
            start = len(seq) - len(choice)
            mask = [m and i >= start for i, m in enumerate(mask)]
        seqs.append(seq)
        masks.append(mask)
        nbytes.append(sum(byte_lengths[t] for t, m in zip(seq, mask, strict=True) if m))
    logps = sequence_logprobs(loaded.model, seqs, masks, loaded.device, ids.bos)
    return logps, [mean_or_missing(lp, n) for lp, n in zip(logps, nbytes, strict=True)]


def _argmax(values: Sequence[float]) -> int:
    # a choice without bytes has no per-byte score: it never wins (NaN would compare oddly)
    return max(range(len(values)), key=lambda i: -math.inf if is_missing(values[i]) else values[i])


def evaluate_choice_task(loaded: Any, examples: Sequence[ChoiceExample], order: Direction,
                         progress: Progress | None = None, label: str = "examples",
                         ) -> tuple[list[dict], dict[str, Any]]:
    """Per-example records and the summary (acc, acc_norm) of a multiple-choice task; each
    example scored is told to ``progress`` under ``label``."""
    byte_lengths = loaded.tokenizer.token_byte_lengths()
    records = []
    for i, ex in enumerate(examples):
        logps, norms = score_choices(loaded, ex, order, byte_lengths)
        pred, pred_norm = _argmax(logps), _argmax(norms)
        records.append({"id": ex.id, **ex.extra, "answer": ex.answer, "pred": pred,
                        "correct": pred == ex.answer, "pred_norm": pred_norm,
                        "correct_norm": pred_norm == ex.answer, "logprobs": logps,
                        "per_byte": norms})
        if progress is not None:
            progress(label, i + 1, len(examples))
    n = len(records)
    acc = mean_or_missing(sum(r["correct"] for r in records), n)
    summary = {"n": n, "metric": "acc", "score": acc, "acc": acc,
               "acc_norm": mean_or_missing(sum(r["correct_norm"] for r in records), n),
               "scoring": "conditional" if order == Direction.FORWARD else "joint"}
    return records, summary


def generate_written(loaded: Any, given: Sequence[int], order: Direction,
                     max_new_tokens: int) -> list[int]:
    """Greedily write after the ``given`` reading-order tokens in ``order``; returns what was
    written, in reading order. The prompt keeps the ``seq_len // 2`` given tokens nearest
    the writing point, so the model writes within the context length it was trained on."""
    ids = loaded.tokenizer.special_ids
    seq, _ = encode_for(given, loaded.direction, order, ids)
    head = prefix_length(loaded.direction)
    seq = seq[:head] + seq[head:][-max(1, loaded.model.cfg.seq_len // 2):]
    stop = {ids.bos, ids.forward, ids.backward, ids.user_start, ids.user_end,
            ids.assistant_start, ids.assistant_end}
    written: list[int] = []
    for token in loaded.model.generate(seq, max_new_tokens, temperature=0.0):
        if token in stop:  # a special token ends the document (or its start, going backward)
            break
        written.append(token)
    return model_order(written, order)


def evaluate_generation_task(loaded: Any, examples: Sequence[GenExample], order: Direction,
                             max_new_tokens: int, progress: Progress | None = None,
                             label: str = "examples") -> tuple[list[dict], dict[str, Any]]:
    """Per-example records and the summary of a generation task (see the module docstring);
    each example written is told to ``progress`` under ``label``."""
    tok = loaded.tokenizer
    forward = order == Direction.FORWARD
    records = []
    for i, ex in enumerate(examples):
        given, reference = ex.split(order)
        ref_ids = tok.encode(reference)
        # The reference is cut to the tokens nearest the given part: the span asked for.
        ref_ids = ref_ids[:max_new_tokens] if forward else ref_ids[-max_new_tokens:]
        output = tok.decode(generate_written(loaded, tok.encode(given), order, max_new_tokens))
        ref_text = tok.decode(ref_ids)
        record = {"id": ex.id, "given": given, "output": output, "reference": ref_text,
                  "final": ex.final, "token_f1": token_f1(output, ref_text)}
        if forward:
            record["predicted"] = extract_answer(output)
            record["exact_match"] = record["predicted"] == ex.final
        else:
            record["answer_mentioned"] = ex.final in numbers_in(output)
        records.append(record)
        if progress is not None:
            progress(label, i + 1, len(examples))
    n = len(records)
    f1 = mean_or_missing(sum(r["token_f1"] for r in records), n)
    summary: dict[str, Any] = {"n": n, "metric": "token_f1", "score": f1, "token_f1": f1,
                               "max_new_tokens": max_new_tokens}
    key = "exact_match" if forward else "answer_mentioned"
    summary[key] = mean_or_missing(sum(r[key] for r in records), n)
    return records, summary
