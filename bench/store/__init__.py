"""Stored results: versioned JSON records (records.py), run directories and their parquet tables (runs.py), the
DuckDB history with its migrations (history.py), and the comparability guard (compare.py)."""
