"""Serving one loaded model; knows no training, no experiment folder layout.

- ``conversation``: the conversation engine (turns written in the model's direction);
- ``model_thread``: every generation on one model thread, in arrival order, ahead of its reader;
- ``batch``: concurrent generations' rows decoded together (continuous batching);
- ``wire``: the OpenAI-compatible request and response shapes; ``replies``: replies decoded
  together, cut at stop strings; ``completions``: ``/v1/completions`` and log-probabilities;
- ``app``: the FastAPI app and its runner; ``web/``: the chat page.
"""

from __future__ import annotations

from backlm.serve.app import create_app, serve
from backlm.serve.conversation import Chat, Sampling

__all__ = ["Chat", "Sampling", "create_app", "serve"]
