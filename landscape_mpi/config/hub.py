"""Where an ``hf:`` spec points: a local folder (``save_pretrained``'s, a tokenizer's, ``save_to_disk``'s), or a
model in the local Hugging Face Hub cache by its repo id, never downloaded.

``hf:PATH`` names an existing folder or file; anything else after ``hf:`` is read as a repo id (``gpt2``,
``org/name``) and looked up in the local cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``) with ``local_files_only``: the network is never asked, whatever
``HF_HUB_OFFLINE`` says (it is respected, as offline is all this does). The model options (``--model hf:...``)
and the data options (``--tokenizer``) share this one resolution.
"""

from __future__ import annotations

import os
from typing import Any

from landscape_mpi.config.errors import UserError

HF_PREFIX = "hf:"


def is_hf(spec: str | None) -> bool:
    """Whether `spec` is an ``hf:`` spec."""
    return isinstance(spec, str) and spec.startswith(HF_PREFIX)


def local_path(spec: str, option: str) -> str:
    """The local folder or file of ``hf:X`` (or of a bare X): X itself where it exists, else the snapshot folder
    of repo id X in the local Hub cache; UserError naming `option` where neither is there."""
    target = spec[len(HF_PREFIX):] if is_hf(spec) else spec
    if os.path.exists(target):
        return target
    looks_like_path = target.startswith((".", "/", "~")) or target.count("/") > 1
    where = "no such folder or file"
    if not looks_like_path and target:
        try:
            from huggingface_hub import constants, snapshot_download
        except ImportError:
            raise UserError(f"{option} hf:{target}: no such folder, and a Hub cache entry needs huggingface_hub "
                            f"(the hf extra: pip install 'landscape-mpi[hf]')") from None
        try:
            return snapshot_download(target, local_files_only=True)
        except Exception:  # noqa: BLE001  (not cached, an invalid repo id: both mean 'not here')
            where = f"no such folder, and no model {target!r} in the local Hub cache {constants.HF_HUB_CACHE}"
    raise UserError(f"{option} hf:{target}: {where}; give a folder written by save_pretrained (hf:DIR), or the "
                    f"repo id of a model already in the Hub cache (nothing is downloaded)")


def checkpoint_of_model(values: dict[str, Any]) -> str | None:
    """``--checkpoint``'s value when it is not given: the folder of ``--model hf:...`` (its weights), else
    None (then --checkpoint is required)."""
    model = values.get("model")
    return local_path(model, "--model") if is_hf(model) else None


def tokenizer_of_model(values: dict[str, Any]) -> str | None:
    """``--tokenizer``'s value when it is not given: the folder of ``--model hf:...``, else None."""
    model = values.get("model")
    return local_path(model, "--model") if is_hf(model) else None
