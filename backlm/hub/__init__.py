"""A checkpoint staged and pushed to the Hugging Face Hub; knows no training loop or server.

- ``upload``: every check first, the staged folder placed whole, the push recorded;
- ``staging``: the hub model folder of one checkpoint;
- ``card``: the model card; ``client``: the hub boundary (repo, upload, errors).
"""

from __future__ import annotations

from backlm.hub.upload import UploadRequest, UploadResult, upload

__all__ = ["UploadRequest", "UploadResult", "upload"]
