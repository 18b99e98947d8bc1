"""A checkpoint staged and pushed to the Hugging Face Hub; knows no training loop or server.

- ``upload``: every check first, the staged folder placed whole, the push recorded;
- ``staging``: the hub model folder of one checkpoint;
- ``card``: the model card; ``client``: the hub boundary (repo, upload, errors);
- ``export``: the same folder written locally; ``hf_export``, ``tokenizer_hf`` and
  ``remote/``: what lets transformers load it without backlm.
"""

from __future__ import annotations

from backlm.hub.export import ExportRequest, export
from backlm.hub.upload import UploadRequest, UploadResult, upload

__all__ = ["ExportRequest", "UploadRequest", "UploadResult", "export", "upload"]
