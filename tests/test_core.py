"""The shared skeleton: error messages, YAML validation with lines, versioned records, atomic writes, CLI start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from bench import atomic
from bench.errors import InputError, RecordError, did_you_mean
from bench.store import records
from bench.yamlconf import load_yaml


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    udid: str
    enabled: bool = True


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid")
    devices: list[Device]


def test_did_you_mean_suggests_the_closest_name():
    err = did_you_mean("compression", "palletize", ["palettize", "prune", "quantize"])
    assert "did you mean 'palettize'" in str(err)


def test_did_you_mean_lists_known_names_when_nothing_is_close():
    err = did_you_mean("compute unit", "zzz", ["cpuOnly", "all"])
    assert "known: all, cpuOnly" in str(err)


def test_yaml_error_names_file_line_and_key(tmp_path: Path):
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  - name: a\n    udid: x\n  - name: b\n    enabled: nope\n")
    with pytest.raises(InputError) as caught:
        load_yaml(path, Inventory)
    message = str(caught.value)
    assert message.startswith(f"{path}:4: devices.1.udid: required key is missing")
    assert "1 more problem" in message


def test_yaml_unknown_key_points_at_its_line(tmp_path: Path):
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  - name: a\n    udid: x\n    colour: red\n")
    with pytest.raises(InputError, match=r":4: devices.0.colour: unknown key"):
        load_yaml(path, Inventory)


def test_yaml_syntax_error_has_a_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("devices:\n  - name: [a\n")
    with pytest.raises(InputError, match=r"bad.yaml:\d+: invalid YAML"):
        load_yaml(path, Inventory)


def test_missing_yaml_file_is_one_line(tmp_path: Path):
    with pytest.raises(InputError, match="file not found"):
        load_yaml(tmp_path / "absent.yaml", Inventory)


def test_records_are_versioned_immutable_and_migrated(tmp_path: Path):
    records.register_kind("test.thing", 2)

    @records.migration("test.thing", 1)
    def rename_field(record: dict) -> dict:
        record["size_bytes"] = record.pop("size")
        return record

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema": "test.thing", "schema_version": 1, "size": 3}))
    assert records.read(old, "test.thing") == {"schema": "test.thing", "schema_version": 2, "size_bytes": 3}

    new = records.write(tmp_path / "new.json", "test.thing", {"size_bytes": 4})
    with pytest.raises(RecordError, match="immutable"):
        records.write(new, "test.thing", {"size_bytes": 5})

    future = tmp_path / "future.json"
    future.write_text(json.dumps({"schema": "test.thing", "schema_version": 9}))
    with pytest.raises(RecordError, match="newer than this bench"):
        records.read(future, "test.thing")

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    with pytest.raises(RecordError, match="corrupt record"):
        records.read(corrupt, "test.thing")


def test_atomic_directory_leaves_nothing_on_failure(tmp_path: Path):
    final = tmp_path / "variant"
    with pytest.raises(RuntimeError):
        with atomic.directory(final) as staging:
            (staging / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic.directory(final) as staging:
        (staging / "done.bin").write_bytes(b"y")
    assert (final / "done.bin").read_bytes() == b"y"


def test_atomic_write_replaces_whole_file(tmp_path: Path):
    target = atomic.write_json(tmp_path / "a" / "b.json", {"k": 1})
    assert json.loads(target.read_text()) == {"k": 1}
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_cli_help_imports_no_heavy_library():
    probe = (
        "import sys\n"
        "from bench.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'coremltools', 'transformers', 'pymobiledevice3', 'pandas', 'duckdb', 'plotly', 'scipy', 'ray')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr


def test_cli_turns_bench_errors_into_one_line(tmp_path: Path):
    """`bench report` in an empty workspace raises an InputError inside a command (not a usage error)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "report"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "BENCH_ROOT": str(tmp_path)},
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: no runs under") and done.stderr.count("\n") == 1, done.stderr


def test_an_operating_system_refusal_is_one_line(tmp_path: Path):
    """The last safety net in main(): an OSError that no layer turned into a BenchError still reads as one line."""
    probe = (
        "import sys\n"
        "from bench.cli import app, main\n"
        "@app.command('explode')\n"
        "def explode():\n"
        "    open('/proc/definitely/not/here', 'w')\n"
        "sys.exit(main(['explode']))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: No such file or directory: /proc/definitely/not/here")
