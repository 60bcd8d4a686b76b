"""CSV / Parquet export of the merged table (one row per variant × target × compute unit), written atomically."""

from __future__ import annotations

from pathlib import Path

from bench import atomic
from bench.report.data import ReportData


def export_table(report: ReportData, path: Path | str, fmt: str) -> Path:
    """Write the merged table; host-torch rows keep `emulated=True` and their "host emulation (not Core ML)" target."""
    path = Path(path)
    table = report.table.copy()
    table.insert(0, "run_id", report.run_id)
    if fmt == "csv":
        return atomic.write_text(path, table.to_csv(index=False, lineterminator="\n"))
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic.temporary_path(path) as tmp:
            pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp)
        return path
    raise ValueError(f"export knows csv and parquet, not {fmt!r}")
