"""Text and conversations to shards and batches; knows no model, experiment folder or loop.

- ``shards``, ``vocab``, ``token_cache``: parquet shards, their tokenizer, pre-tokenized ids;
- ``docstrings``, ``corpus``, ``pydocs_chat``, ``arith``: the embedded default data;
- ``download``, ``datasets``, ``chat_download``, ``importer``: data from outside;
- ``loader``, ``convloader``: direction-correct, BOS-aligned, packed batches;
- ``pairs``, ``diagnose``, ``ngram``, ``chat``: paired records, checks, conversations.

Modules are imported by name (``backlm.data.loader``): importing the package loads none.
"""

__all__: list[str] = []
