"""What changed between two analysed variants: bytes, op types, decompression ops, tensor storage formats."""

from __future__ import annotations

from collections import Counter

from bench.build.analyze import PackageAnalysis
from bench.build.torch_weights import base_constant_name


def _signed(a: float, b: float, unit: str = "") -> str:
    if a == b:
        return "="
    ratio = f" ({b / a:.2f}×)" if a else ""
    return f"{b - a:+,.0f}{unit}{ratio}"


def diff_analyses(first: dict[str, PackageAnalysis], second: dict[str, PackageAnalysis]) -> list[tuple[str, str, str, str]]:
    """Rows (what, A, B, change). Packages are matched by name; tensors by their uncompressed constant name."""
    rows: list[tuple[str, str, str, str]] = []
    for package in sorted(set(first) | set(second)):
        a, b = first.get(package), second.get(package)
        if a is None or b is None:
            rows.append((f"{package}", "present" if a else "absent", "present" if b else "absent", "package"))
            continue
        rows.append((f"{package} bytes", f"{a.bytes:,}", f"{b.bytes:,}", _signed(a.bytes, b.bytes)))
        rows.append((f"{package} weight.bin", f"{a.weight_bytes:,}", f"{b.weight_bytes:,}",
                     _signed(a.weight_bytes, b.weight_bytes)))
        rows.append((f"{package} non-zero weights", f"{a.nonzero_params:,}", f"{b.nonzero_params:,}",
                     _signed(a.nonzero_params, b.nonzero_params)))
        for op in sorted(set(a.op_counts) | set(b.op_counts)):
            ca, cb = a.op_counts.get(op, 0), b.op_counts.get(op, 0)
            if ca != cb:
                rows.append((f"{package} op {op}", str(ca), str(cb), f"{cb - ca:+d}"))
        formats_a = Counter(t.storage for t in a.tensors)
        formats_b = Counter(t.storage for t in b.tensors)
        for storage in sorted(set(formats_a) | set(formats_b)):
            if formats_a[storage] != formats_b[storage]:
                rows.append((f"{package} tensors stored {storage}", str(formats_a[storage]), str(formats_b[storage]),
                             f"{formats_b[storage] - formats_a[storage]:+d}"))
        by_name_b = {base_constant_name(t.name): t for t in b.tensors}
        for t in a.tensors:
            other = by_name_b.get(base_constant_name(t.name))
            if other is not None and (other.storage != t.storage or other.dtype != t.dtype):
                rows.append((f"{package}:{base_constant_name(t.name)}", f"{t.storage} {t.dtype} {t.bytes:,} B",
                             f"{other.storage} {other.dtype} {other.bytes:,} B", _signed(t.bytes, other.bytes, " B")))
    return rows
