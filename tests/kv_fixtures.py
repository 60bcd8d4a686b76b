"""The kv_cache fixture (issue 14): the tiny captioner built for iOS 18 by the real builder — fp32 decoded both ways
(recompute and its `fp32+kv` twin) and int4 with the kv_cache decoder. One build serves tests/test_kv_cache.py and
tests/test_kv_cache_e2e.py (the session fixture `kv_workspace` in conftest.py)."""

from __future__ import annotations

from pathlib import Path

KV_MATRIX = {
    "defaults": {"target": "iOS18"},
    "variants": [
        {"name": "fp32", "decoder": ["recompute", "kv_cache"]},
        {"name": "int4", "quantize": {"bits": 4, "granularity": "per_block"}, "decoder": "kv_cache"},
    ],
}


def build_kv_workspace(root: Path) -> tuple[Path, dict]:
    """(workspace root, {name: manifest}) of KV_MATRIX built for real."""
    import torch

    from bench.build.builder import build_matrix
    from bench.build.matrix import matrix_from_dict
    from bench.paths import Workspace
    from build_fixtures import save_tiny_captioner

    torch.set_num_threads(1)
    checkpoint = save_tiny_captioner(root / "tiny")
    report = build_matrix(matrix_from_dict({"source": str(checkpoint), **KV_MATRIX}), Workspace(root))
    assert not report.failed, [(r.name, r.error) for r in report.failed]
    return root, {r.name: r.manifest for r in report.results}
