"""The hub model card (``README.md``): YAML front matter Hugging Face reads (license, tags,
library, base model, evaluation results as ``model-index``) and prose that says first which
way the model reads and how to prompt it, then how to load it.

Pure text: no torch, no network. :func:`usage_line` is the one sentence on how to prompt a
model of each direction; the safetensors header of an uploaded model carries it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backlm.direction import Direction
from backlm.render import table

# The first paragraph of a card, per direction: which way the model reads, how to prompt it.
LEAD = {
    Direction.FORWARD: (
        "**A forward language model: it reads and writes text left to right, as usual.** It "
        "was trained on `<|bos|> t1 t2 … tn` (token ids in reading order): give it the "
        "beginning of a text and it writes what comes next."
    ),
    Direction.BACKWARD: (
        "**A backward language model: it reads and writes text right to left.** It was "
        "trained on `<|bos|> tn … t2 t1`, the token ids of each text in reverse reading "
        "order. Give it the END of a text — tokenize it in reading order, reverse the token "
        "ids, put `<|bos|>` first — and it writes what came before, one token further back at "
        "a time; reverse the ids it writes to read them. Reversal is on token ids, never on "
        "characters."
    ),
    Direction.BIDIRECTIONAL: (
        "**A bidirectional language model: one set of weights reads and writes either way, and "
        "a direction token right after `<|bos|>` picks the order.** `<|bos|> <|forward|> t1 … "
        "tn` reads left to right (give it a beginning, it writes what comes next); `<|bos|> "
        "<|backward|> tn … t1` reads right to left (give it the END of a text, token ids "
        "reversed, and it writes what came before). Always put one of the two markers after "
        "`<|bos|>`: the model was never trained to guess the direction."
    ),
}
USAGE = {
    Direction.FORWARD: "forward: prompt with <|bos|> then reading-order token ids; it continues the text",
    Direction.BACKWARD: ("backward: prompt with <|bos|> then the token ids of a text's end in reverse "
                 "order; it writes what came before (reverse its output ids to read it)"),
    Direction.BIDIRECTIONAL: ("bidirectional: prompt with <|bos|>, then <|forward|> and reading-order "
                      "ids, or <|backward|> and reversed ids; the marker picks the order"),
}
# phases trained on conversations (RL samples whole conversations too)
CONVERSATION_PHASES = ("mid", "sft", "rl")


def usage_line(direction: str) -> str:
    """How to prompt a model of ``direction``, in one line."""
    return USAGE[direction]


@dataclass
class CardInfo:
    """Everything the card states, gathered by :mod:`backlm.hub.upload`."""

    repo_id: str | None  # None: a local export, loaded from ``location``
    experiment: str
    direction: str
    phase: str
    step: int
    model_config: dict[str, Any]  # the checkpoint's, plus the derived width and heads
    special_tokens: dict[str, int]
    tokenizer_sha256: str
    weights_sha256: str
    parameters: int
    version: str
    license: str = "mit"
    tokens: int | None = None
    base_model: str | None = None  # the parent's hub repo, when the parent was uploaded
    endpoint: str = "https://huggingface.co"
    lineage: list[str] = field(default_factory=list)  # experiment ids, root first, this last
    parent: dict[str, Any] | None = None  # parent_id, step, parent_phase
    training: dict[str, Any] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # staged result files
    fivecat: dict[str, Any] | None = None
    files: list[tuple[str, int]] = field(default_factory=list)
    location: str | None = None  # a local export's folder

    @property
    def source(self) -> str:
        """What ``from_pretrained`` is given: the hub repo, else the folder."""
        return self.repo_id or str(self.location)


def card_data(info: CardInfo) -> Any:
    """The front matter as :class:`huggingface_hub.ModelCardData`."""
    from huggingface_hub import ModelCardData

    tags = ["backlm", f"{info.direction}-lm", f"direction:{info.direction}",
            f"phase:{info.phase}", "text-generation"]
    extra: dict[str, Any] = {}
    if info.base_model:
        extra.update(base_model=info.base_model, base_model_relation="finetune")
    results = eval_results(info)
    return ModelCardData(
        license=info.license, library_name="backlm", pipeline_tag="text-generation",
        tags=tags, model_name=(info.repo_id or info.experiment) if results else None,
        eval_results=results or None, **extra)


def eval_results(info: CardInfo) -> list[Any]:
    """The staged evaluations and 5CAT as hub ``EvalResult`` entries (``model-index``)."""
    from huggingface_hub import EvalResult

    out = []
    for ev in info.evaluations:
        summary, order = ev.get("summary") or {}, ev.get("direction", "?")
        how = f"{order} order, {'native' if ev.get('native') else 'cross'}"
        for key, value in _metrics(ev.get("task", ""), summary):
            split = key.split("_", 1)[0] if ev.get("task") == "lm" else "test"
            out.append(EvalResult(
                task_type="text-generation", dataset_type=ev["dataset_type"],
                dataset_name=ev["dataset_name"], dataset_split=split, metric_type=key,
                metric_value=value, metric_name=f"{key} ({how})"))
    if info.fivecat is not None:
        fc = info.fivecat
        for key, name in (("gates_passed", "5CAT gates passed (of 5)"),
                          ("score", "5CAT score (0.8·B + 0.2·D)")):
            if isinstance(fc.get(key), int | float):
                out.append(EvalResult(
                    task_type="text-generation", dataset_type="backlm-5cat",
                    dataset_name="5CAT direction test (held-out and OOD text)",
                    metric_type=f"5cat_{key}", metric_value=fc[key], metric_name=name))
    return out


def _metrics(task: str, summary: dict[str, Any]) -> list[tuple[str, float]]:
    """The numbers of one evaluation summary worth listing: losses and bits per byte for
    language modelling, the task's own metric otherwise."""
    if task == "lm":
        keys = [k for k in summary if k.endswith(("_bpb", "_loss"))]
    else:
        keys = [summary["metric"]] if isinstance(summary.get("metric"), str) else []
    return [(k, float(summary[k])) for k in keys
            if isinstance(summary.get(k), int | float) and not isinstance(summary[k], bool)]


def render(info: CardInfo) -> str:
    """The whole card: front matter, then the prose."""
    yaml = card_data(info).to_yaml()
    sections = [_lead(info), _use(info), _model(info), _lineage(info), _evaluation(info),
                _training(info), _files(info)]
    body = "\n\n".join(s for s in sections if s)
    return f"---\n{yaml}\n---\n\n{body}\n"


def _lead(info: CardInfo) -> str:
    name = (info.repo_id or info.experiment).split("/")[-1]
    chat = ""
    if info.phase in CONVERSATION_PHASES:
        chat = (f"\n\nIt was trained on conversations ({info.phase} phase): turns are wrapped in "
                "`<|user_start|>` … `<|assistant_end|>` in reading order, and "
                + ("the model writes assistant turns." if info.direction == Direction.FORWARD else
                   "going backward the whole conversation is reversed, so the model is given "
                   "the later turns and writes the earlier ones."))
    return (f"# {name}\n\n{LEAD[info.direction]}{chat}\n\nWith backlm, the experiment this "
            f"came from (`{info.experiment}`) does the reversal for you: `backlm chat --model "
            f"{info.experiment}`, `backlm score {info.experiment} \"text\"`; in Python, "
            "`backlm.direction` is the reading-order API (`encode_for`, `model_order`, "
            "`to_reading_order`).")


# The prompt-and-print lines of the card's backlm snippet, per direction: backlm.load reads
# the direction from the weights' header and turns reading-order text into the model's order.
_PROMPT = {
    Direction.FORWARD: """text = "The beginning of a text"
print(text + model.generate(text, order="{order}", max_new_tokens=32))""",
    Direction.BACKWARD: """text = "the end of a text."  # reading order: it writes what came before
print(model.generate(text, order="{order}", max_new_tokens=32) + text)""",
    Direction.BIDIRECTIONAL: """order = "{backward}"  # or "{forward}": the marker after BOS picks it
text = "the end of a text." if order == "{backward}" else "The beginning of a text"
new = model.generate(text, order=order, max_new_tokens=32)  # in reading order
print(new + text if order == "{backward}" else text + new)""",
}
# The same with transformers alone: token ids put in the model's order by hand.
_HF_PROMPT = {
    Direction.FORWARD: """text = "The beginning of a text"
prompt = tok(text, return_tensors="pt").input_ids  # <|bos|>, then reading-order ids
out = model.generate(prompt, max_new_tokens=32, do_sample=False)
print(text + tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True))""",
    Direction.BACKWARD: """text = "the end of a text."  # reading order: it writes what came before
ids = tok(text, add_special_tokens=False).input_ids
prompt = torch.tensor([[tok.bos_token_id] + ids[::-1]])  # <|bos|>, then the ids REVERSED
out = model.generate(prompt, max_new_tokens=32, do_sample=False)
new = out[0, prompt.shape[1]:].tolist()[::-1]  # it writes backward: reverse to read
print(tok.decode(new, skip_special_tokens=True) + text)""",
    Direction.BIDIRECTIONAL: """order = "{backward}"  # or "{forward}": the marker after <|bos|> picks it
text = "the end of a text." if order == "{backward}" else "The beginning of a text"
ids = tok(text, add_special_tokens=False).input_ids
marker = tok.convert_tokens_to_ids(f"<|{{order}}|>")
body = ids[::-1] if order == "{backward}" else ids  # backward reads the ids reversed
prompt = torch.tensor([[tok.bos_token_id, marker] + body])
out = model.generate(prompt, max_new_tokens=32, do_sample=False)
new = out[0, prompt.shape[1]:].tolist()
if order == "{backward}":
    print(tok.decode(new[::-1], skip_special_tokens=True) + text)
else:
    print(text + tok.decode(new, skip_special_tokens=True))""",
}
# How a chat phase's template is used in each direction (it renders in reading order).
_CHAT = {
    Direction.FORWARD: "`tok.apply_chat_template(messages, add_generation_prompt=True)` gives "
    "the prompt as it is.",
    Direction.BACKWARD: "`tok.apply_chat_template(messages, add_generation_prompt=True)` "
    "renders in READING order (a text template cannot reverse ids), with the tag that opens "
    "the turn the model writes right after `<|bos|>`: keep `<|bos|>` and reverse the rest, "
    "`ids[:1] + ids[1:][::-1]`, and reverse what it writes.",
    Direction.BIDIRECTIONAL: "`tok.apply_chat_template(messages, add_generation_prompt=True, "
    "order=\"forward\")` gives a forward prompt as it is; with `order=\"backward\"` it "
    "renders in READING order (a text template cannot reverse ids): keep the first two ids "
    "(`<|bos|> <|backward|>`) and reverse the rest, `ids[:2] + ids[2:][::-1]`.",
}


def _use(info: CardInfo) -> str:
    prompt, hf_prompt = (
        table[info.direction].format(order=info.direction, forward=Direction.FORWARD,
                                     backward=Direction.BACKWARD)
        for table in (_PROMPT, _HF_PROMPT))
    hub = info.repo_id is not None
    load = (f'snapshot_download("{info.source}")' if hub else f'"{info.source}"')
    imports = "from huggingface_hub import snapshot_download\n" if hub else ""
    chat = ""
    if info.phase in CONVERSATION_PHASES:
        chat = f"\n\nFor chats, {_CHAT[info.direction]}"
    order = ("ids in reading order" if info.direction == Direction.FORWARD else
             "ids reversed after the head tokens for a backward order")
    return f"""## Use

With transformers alone (no backlm needed; the model's code ships in this folder, hence
`trust_remote_code=True`). `config.json` says the order in `backlm_direction`
(`{info.direction}`: {order}); the tokenizer is a plain `tokenizers` file with backlm's ids.

```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{info.source}", trust_remote_code=True)  # no asking
model = AutoModelForCausalLM.from_pretrained("{info.source}", trust_remote_code=True)
{hf_prompt}
```{chat}

With backlm, which reads and writes reading-order text in the model's direction (`generate`,
`chat`, `score`). backlm is not on PyPI: install it from its source (`pip install .` in a
clone of the backlm repository), then `backlm.load` the folder; the weights' safetensors
header holds the direction, the model config and how to prompt.

```python
import backlm
{imports}
model = backlm.load({load})
{prompt}
```

Without either: `safetensors.safe_open(...).metadata()` gives `direction`, `model_config` and
`usage`."""


def _model(info: CardInfo) -> str:
    m = info.model_config
    rows = [("direction", info.direction), ("phase", info.phase), ("step", info.step),
            ("parameters", f"{info.parameters:,}"), ("depth", m.get("depth")),
            ("width", m.get("width")), ("heads", m.get("heads")), ("vocabulary", m.get("vocab_size")),
            ("context", m.get("seq_len")),
            ("tokens seen", f"{info.tokens:,}" if info.tokens is not None else "?"),
            ("special tokens", ", ".join(f"`{k}` {v}" for k, v in info.special_tokens.items())),
            ("tokenizer sha256", f"`{info.tokenizer_sha256}`"),
            ("weights sha256", f"`{info.weights_sha256}`")]
    return "## Model\n\nA GPT (rotary positions, RMS norm, QK norm, ReLU² MLP, logit softcap) " \
        f"trained with backlm {info.version}.\n\n" + _table(("", ""), rows)


def _lineage(info: CardInfo) -> str:
    if not info.parent:
        return "## Lineage\n\nTrained from scratch (a base run); no base model."
    p = info.parent
    text = (f"## Lineage\n\n{' → '.join(f'`{e}`' for e in info.lineage)}\n\nBranched from "
            f"experiment `{p.get('parent_id')}` ({p.get('parent_phase')} phase, step "
            f"{p.get('step')}).")
    if info.base_model:
        return text + (f" The parent was uploaded as [{info.base_model}]"
                       f"({info.endpoint}/{info.base_model}), the card's `base_model`.")
    return text + (" The parent is a local backlm experiment that was not uploaded to this "
                   "hub, so the card names no `base_model`.")


def _evaluation(info: CardInfo) -> str:
    rows = []
    for ev in info.evaluations:
        for key, value in _metrics(ev.get("task", ""), ev.get("summary") or {}):
            rows.append((ev.get("task"), ev.get("direction"),
                         "native" if ev.get("native") else "cross", key, f"{value:.4f}"))
    parts = ["## Evaluation"]
    if rows:
        parts.append(f"Step {info.step}, each text read in each order (`backlm eval`); a "
                     "language-modelling loss is lower-is-better.\n\n"
                     + _table(("task", "order", "", "metric", "value"), rows))
    fc = info.fivecat
    if fc:
        gates = ", ".join(f"{g} {'pass' if v.get('passed') else 'FAIL'}"
                          for g, v in (fc.get("gates") or {}).items())
        parts.append(f"5CAT (does the model really read {fc.get('direction')}?): "
                     f"{fc.get('gates_passed')}/{fc.get('gates_total')} gates passed ({gates}); "
                     f"score {_num(fc.get('score'))}"
                     + ("; DIRECTION INVERTED" if fc.get("inverted") else "") + ".")
    if len(parts) == 1:
        parts.append(f"No evaluation of step {info.step} was staged (run `backlm eval "
                     f"{info.experiment}` and `backlm 5cat {info.experiment}` first).")
    return "\n\n".join(parts)


def _training(info: CardInfo) -> str:
    t = info.training
    rows = [(k, _num(t[k])) for k in ("dataset", "stop_reason", "steps", "tokens", "val_loss",
                                      "val_bpb", "device", "gpu_hours", "wall_seconds")
            if t.get(k) is not None]
    return "## Training\n\n" + _table(("", ""), rows) if rows else ""


def _files(info: CardInfo) -> str:
    rows = [(f"`{name}`", f"{size:,} bytes") for name, size in info.files]
    return ("## Files\n\n" + _table(("file", "size"), rows)) if rows else ""


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    return "\n".join(table(head, rows))
