"""The Python API: :func:`load` a trained model, then :meth:`Model.generate`,
:meth:`Model.chat` and :meth:`Model.score` in its direction.

``backlm chat``, ``backlm serve``, ``backlm score`` and the model card's snippet use this;
like them, it turns text into the model's order and back, so a caller only ever reads and
writes reading-order text::

    import backlm

    model = backlm.load("d20_backward")   # an experiment id, tag or folder, or a hub folder
    text = "the end of a text."
    print(model.generate(text) + text)    # backward: it writes what came before
    print(model.score(text))              # log-probability and bits per byte, per order
    chat = model.chat()                   # a conversation in the model's order
    for piece in chat.send("The answer is 12."):
        print(piece.text, piece.where)    # where each piece goes in the reading-order turn
    print(chat.messages)                  # the whole conversation, in reading order
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backlm.direction import Direction

__all__ = ["Model", "load"]


@dataclass
class Model:
    """A trained model with its tokenizer and direction, in eval mode."""

    loaded: Any  # backlm.experiment.LoadedModel

    @property
    def direction(self) -> Direction:
        """The direction the checkpoint declares."""
        return self.loaded.direction

    @property
    def name(self) -> str:
        """The experiment the weights come from."""
        return self.loaded.name

    @property
    def step(self) -> int:
        """The checkpoint's step."""
        return self.loaded.step

    @property
    def phase(self) -> str:
        """The phase that trained it (base models continue text; the others write turns)."""
        return self.loaded.phase

    @property
    def module(self) -> Any:
        """The underlying ``torch.nn.Module`` (a :class:`backlm.model.GPT`)."""
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        """The model's own tokenizer."""
        return self.loaded.tokenizer

    def chat(self, order: Direction | str | None = None) -> Any:
        """A conversation in ``order`` (default: the model's own; bidirectional models take
        either): ``send(text)`` streams the model's turn as :class:`backlm.serve.Chat` does.
        A base model continues text instead of writing turns."""
        from backlm.serve import Chat

        return Chat(self.loaded.model, self.loaded.tokenizer, self.direction,
                    self.loaded.phase, _order(order))

    def generate(self, text: str = "", *, order: Direction | str | None = None,
                 max_new_tokens: int = 64, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> str:
        """The text the model writes next to ``text`` in ``order``, in reading order: forward
        continues after it, backward writes what comes before it. Greedy by default."""
        from backlm.serve import Chat, Sampling

        chat = Chat(self.loaded.model, self.loaded.tokenizer, self.direction, "base",
                    _order(order))
        sampling = Sampling(max_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed)
        for _ in chat.send(text, sampling):
            pass
        return chat.last_turn

    def score(self, text: str) -> dict[str, Any]:
        """``text``'s log-probability and bits per byte in every order the model knows."""
        from backlm.evaluation import score_text

        return score_text(self.loaded.model, self.loaded.tokenizer, self.direction, text)


def _order(order: Direction | str | None) -> Direction | None:
    """An order named by a caller (this API is an edge: names come in here)."""
    return None if order is None else Direction.parse(order)


def load(ref: str | Path, *, step: int | None = None, device: str = "auto",
         experiments: Path | None = None, decode_dtype: str | None = None) -> Model:
    """A trained model: an experiment (id, tag such as ``d20_backward``, or folder; ``step``
    default the best, else the latest checkpoint) or a hub model folder as ``backlm upload``
    writes it (``model.safetensors`` + ``backlm_tokenizer.json``). It generates in
    ``decode_dtype`` (fp32 or bf16; default the run's precision where the device has bf16)."""
    from backlm.experiment import load_model

    return Model(load_model(ref, experiments, step, device, decode_dtype))
