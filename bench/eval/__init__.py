"""Caption-quality evaluation: batched decoding, sacreBLEU / CIDEr-D with bootstrap CIs, `bench.eval` records.

Public names are loaded lazily so that importing `bench.eval` (e.g. from the CLI) costs nothing until used.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "evaluate": "bench.eval.evaluation",
    "EvalOptions": "bench.eval.evaluation",
    "open_subject": "bench.eval.evaluation",
    "paired_bootstrap": "bench.eval.evaluation",
    "EvalRecord": "bench.eval.records",
    "read_record": "bench.eval.records",
    "DecodeOptions": "bench.eval.decode",
    "decode_images": "bench.eval.decode",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bench.eval' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
