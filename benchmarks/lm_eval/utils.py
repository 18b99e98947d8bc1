"""The local task's choices as backlm's arc-easy renders them (backlm/evaluation/tasks.py
``arc_example``): a space, then the stripped choice text. The space belongs to the choice, not to
a target delimiter, so the harness's acc_norm divides by the same length backlm's per-byte
score does (the choice's characters, the space included)."""


def doc_to_choice(doc: dict) -> list[str]:
    """``" " + text`` for each choice."""
    return [f" {str(text).strip()}" for text in doc["choices"]["text"]]
