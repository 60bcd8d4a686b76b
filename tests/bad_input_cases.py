"""The bad-input catalogue: one healthy workspace, and cases that each damage one thing in a copy and name the command
that reads it. Used by tests/test_bad_input.py (in-process, every case a test) and tests/bad_input_census.py (the real
`python -m bench` in a subprocess per case, counting one-line errors and tracebacks).

What every case must end in: a non-zero exit code, exactly one line on stderr that names the damaged file (or the
option), no traceback, no "unexpected … bug" line, and every stored file byte-identical afterwards.

Real pieces only: the committed report fixture (three runs with parquet tables, eval records, variant manifests), its
runs appended to a real history.duckdb, one tiny variant built by the real builder (coremltools), and a small JSONL
manifest of PNGs. Nothing here fakes a reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from report_fixtures import CURRENT, FIXTURE

RUN = CURRENT.name


@dataclass(frozen=True)
class Case:
    name: str
    damage: Callable[[Path], list[str]]  # damages the workspace copy, returns the argv
    expect: str  # a piece of the one line: the damaged file's name or the option
    heavy: bool = False  # loads torch / coremltools (a few seconds)


def build_template(root: Path) -> Path:
    """The healthy workspace every case copies: fixture runs + history + one tiny built variant + a manifest."""
    from bench.build.builder import build_matrix
    from bench.build.matrix import matrix_from_dict
    from bench.store import history
    from bench.store.runs import load_run
    from eval_fixtures import save_tiny_checkpoint, write_manifest

    shutil.copytree(FIXTURE, root)
    for run in sorted((root / "results").glob("nightly-*")):
        history.append_run(root / "results" / "history.duckdb", load_run(run))
    checkpoint = save_tiny_checkpoint(root / "tiny-ckpt")
    report = build_matrix(matrix_from_dict({"source": str(checkpoint), "variants": [{"name": "tiny"}]}), root)
    if report.failed:
        raise RuntimeError(f"template variant failed to build: {report.failed[0].error}")
    write_manifest(root / "data", 3)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with its sha256: what "stored data byte-identical" is checked against."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------------ helpers
def _png_header(width: int, height: int) -> bytes:
    """A valid PNG header promising width × height pixels: a decompression bomb in 60 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _variant(ws: Path) -> Path:
    return next((ws / "models" / "variants").glob("tiny-*"))


def _eval_record(ws: Path) -> Path:
    return next((ws / "results" / "evals").glob("fp32-*/*.json"))


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _set_column(ws: Path, table: str, column: str, value) -> None:
    import pandas as pd

    path = ws / "results" / RUN / table
    frame = pd.read_parquet(path)
    frame[column] = value
    frame.to_parquet(path)


# ------------------------------------------------------------------------------------------------------ cases
CASES: list[Case] = []


def case(expect: str, heavy: bool = False):
    def register(damage):
        CASES.append(Case(damage.__name__, damage, expect, heavy))
        return damage

    return register


@case("a.png")
def decompression_bomb_in_manifest(ws):
    _write(ws / "data" / "a.png", _png_header(60000, 60000))
    _write(ws / "bomb.jsonl", json.dumps({"image": "data/a.png", "captions": ["a cat"]}) + "\n")
    return ["data", "show", f"manifest:{ws}/bomb.jsonl"]


@case("bomb.jsonl", heavy=True)
def decompression_bomb_during_eval(ws):
    decompression_bomb_in_manifest(ws)
    return ["eval", str(_variant(ws)), "--data", f"manifest:{ws}/bomb.jsonl", "--resamples", "100"]


@case("m.csv:1")
def manifest_csv_not_utf8(ws):
    _write(ws / "m.csv", b"\xff\xfeimage,caption\n")
    return ["data", "show", f"manifest:{ws}/m.csv"]


@case("m.jsonl:1")
def manifest_jsonl_nested_too_deep(ws):
    _write(ws / "m.jsonl", "[" * 100_000 + "\n")
    return ["data", "show", f"manifest:{ws}/m.jsonl"]


@case("m.jsonl:2")
def manifest_jsonl_wrong_types(ws):
    _write(ws / "m.jsonl", json.dumps({"image": "data/img000.png", "captions": ["ok"]}) + "\n"
           + json.dumps({"image": 5, "captions": "a cat"}) + "\n")
    return ["data", "show", f"manifest:{ws}/m.jsonl"]


@case("d.parquet")
def hf_parquet_truncated(ws):
    _write(ws / "d.parquet", b"PAR1" + os.urandom(64))
    return ["data", "show", f"hf:{ws}/d.parquet"]


@case("seed must be")
def negative_seed_data_show(ws):
    return ["data", "show", "synthetic", "--seed", "-5", "--limit", "3"]


@case("seed")
def negative_seed_export(ws):
    return ["data", "export-synthetic", str(ws / "out"), "--seed", "-1", "--limit", "2"]


@case("seed", heavy=True)
def negative_seed_eval(ws):
    return ["eval", str(_variant(ws)), "--seed", "-5", "--limit", "2"]


@case("decoder.mlpackage", heavy=True)
def garbled_model_spec_during_eval(ws):
    _write(_variant(ws) / "decoder.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel", os.urandom(500))
    return ["eval", str(_variant(ws)), "--data", f"manifest:{ws}/data/manifest.jsonl", "--resamples", "100"]


@case("decoder.mlpackage", heavy=True)
def garbled_package_manifest_during_eval(ws):
    _write(_variant(ws) / "decoder.mlpackage" / "Manifest.json", "{")
    return ["eval", str(_variant(ws)), "--data", f"manifest:{ws}/data/manifest.jsonl", "--resamples", "100"]


@case("decoder.mlpackage", heavy=True)
def truncated_weights_during_eval(ws):
    weights = next((_variant(ws) / "decoder.mlpackage").rglob("weight.bin"))
    weights.write_bytes(weights.read_bytes()[:100])
    return ["eval", str(_variant(ws)), "--data", f"manifest:{ws}/data/manifest.jsonl", "--resamples", "100"]


@case("manifest.json")
def variant_manifest_wrong_types(ws):
    _edit_json(_variant(ws) / "manifest.json", lambda m: m["measured"].update(total_bytes="big"))
    return ["models", "inspect", str(_variant(ws))]


@case("samples.parquet")
def truncated_samples_table_in_compare(ws):
    path = ws / "results" / RUN / "samples.parquet"
    path.write_bytes(path.read_bytes()[:300])
    return ["compare", "nightly-2026-11-27", RUN]


@case("jobs.parquet")
def wrongly_shaped_jobs_table_in_compare(ws):
    import pandas as pd

    pd.DataFrame({"x": [1]}).to_parquet(ws / "results" / RUN / "jobs.parquet")
    return ["compare", "nightly-2026-11-27", RUN]


@case("samples.parquet")
def wrong_column_type_in_compare(ws):
    _set_column(ws, "samples.parquet", "is_warmup", "no")
    return ["compare", "nightly-2026-11-27", RUN]


@case("samples.parquet")
def wrong_column_type_in_report(ws):
    _set_column(ws, "samples.parquet", "latency_ns", "fast")
    return ["report", RUN]


@case("history.duckdb")
def damaged_history_in_trend(ws):
    _write(ws / "results" / "history.duckdb", os.urandom(4096))
    return ["trend"]


@case("history.duckdb")
def tableless_history_in_trend(ws):
    import duckdb

    (ws / "results" / "history.duckdb").unlink()
    duckdb.connect(str(ws / "results" / "history.duckdb")).close()
    return ["trend"]


@case("unknown variant 'nope'")
def trend_filter_matching_nothing(ws):
    return ["trend", "--variant", "nope"]


@case(".json")
def eval_record_wrong_types_in_eval_compare(ws):
    record = _eval_record(ws)
    _edit_json(record, lambda r: r["metrics"]["bleu"].update(score="high"))
    return ["eval-compare", str(record), str(record)]


@case("seed")
def negative_seed_eval_compare(ws):
    return ["eval-compare", str(_eval_record(ws)), str(_eval_record(ws)), "--seed", "-1"]


@case("run.json")
def run_manifest_wrong_types(ws):
    _edit_json(ws / "results" / RUN / "run.json", lambda m: m.update(plan=5))
    return ["report", RUN]


@case(".json")
def job_record_sample_wrong_types(ws):
    run = ws / "results" / RUN
    job = sorted((run / "jobs").glob("*.json"))[0]
    _edit_json(job, lambda j: j["samples"][0].update(total_ns="slow"))
    return ["compare", "nightly-2026-11-27", RUN]


@case("--seed")
def negative_seed_run(ws):
    return ["run", "--seed", "-1", "--no-eval", "--no-report"]


@case("run.yaml:1")
def negative_seed_in_run_yaml(ws):
    _write(ws / "run.yaml", "seed: -3\n")
    return ["run", str(ws / "run.yaml")]


@case("run.yaml")
def run_yaml_not_utf8(ws):
    _write(ws / "run.yaml", b"\xff\xfe\x00seed")
    return ["run", str(ws / "run.yaml")]


@case("matrix.yaml:2")
def matrix_yaml_broken(ws):
    _write(ws / "matrix.yaml", "variants: [\n  - {name: x, prune: {sparsity: 2}}\n]\n")
    return ["models", "build", str(ws / "matrix.yaml")]


@case("matrix.yaml:3")
def kv_cache_decoder_below_ios18(ws):
    """Core ML state needs iOS 18: refused before any conversion (issue 14)."""
    _write(ws / "matrix.yaml", "variants:\n  - name: ok\n  - name: kv\n    target: iOS17\n    decoder: kv_cache\n")
    return ["models", "build", str(ws / "matrix.yaml")]


@case("matrix.yaml:3")
def matrix_yaml_unknown_crop_mode(ws):
    _write(ws / "matrix.yaml", "variants:\n  - name: x\n    resizes: [resize, crop]\n")
    return ["models", "build", str(ws / "matrix.yaml")]


@case("matrix.yaml:3")
def matrix_yaml_input_size_not_allowed(ws):
    _write(ws / "matrix.yaml", "variants:\n  - name: x\n    image_sizes: [64, 2048]\n")
    return ["models", "build", str(ws / "matrix.yaml")]


@case("devices.yaml:3")
def devices_yaml_wrong_types(ws):
    _write(ws / "devices.yaml", "devices:\n  - udid: 5\n    name: [x]\n")
    return ["devices"]


@case("encoder.mlpackage")
def garbled_package_in_inspect(ws):
    _write(_variant(ws) / "encoder.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel", os.urandom(300))
    return ["models", "inspect", str(_variant(ws) / "encoder.mlpackage")]


@case("--samples")
def negative_samples_option(ws):
    return ["data", "show", "synthetic", "--samples", "-1", "--limit", "2"]


@case("--last")
def zero_last_option(ws):
    return ["trend", "--last", "0"]


@case("k.json")
def karpathy_json_wrong_types(ws):
    (ws / "imgs").mkdir()
    _write(ws / "k.json", '{"images": [{"filename": 5, "split": [1], "sentences": "x"}]}')
    return ["data", "show", f"flickr30k:{ws}/k.json:{ws}/imgs"]


@case("d.parquet")
def hf_parquet_without_caption_columns(ws):
    import pandas as pd

    pd.DataFrame({"x": [1]}).to_parquet(ws / "d.parquet")
    return ["data", "show", f"hf:{ws}/d.parquet"]


@case("missing")
def manifest_image_missing(ws):
    _write(ws / "m.jsonl", json.dumps({"image": "data/gone.png", "captions": ["a cat"]}) + "\n")
    return ["data", "show", f"manifest:{ws}/m.jsonl"]


@case("did you mean")
def unknown_dataset_kind(ws):
    return ["data", "show", "flikr30k:x:y"]


@case("unknown split")
def unknown_split(ws):
    return ["eval", str(_variant(ws)), "--split", "tset"]


@case(".json")
def eval_record_not_an_object(ws):
    record = _eval_record(ws)
    record.write_text("[1, 2]")
    return ["eval-compare", str(record), str(record)]


@case("schema_version")
def eval_record_schema_version_text(ws):
    record = _eval_record(ws)
    _edit_json(record, lambda r: r.update(schema_version="1"))
    return ["eval-compare", str(record), str(record)]


@case("history.duckdb")
def history_with_foreign_tables(ws):
    import duckdb

    (ws / "results" / "history.duckdb").unlink()
    con = duckdb.connect(str(ws / "results" / "history.duckdb"))
    con.execute("CREATE TABLE samples (x INTEGER)")
    con.execute("CREATE TABLE schema_version (version INTEGER)")
    con.execute("INSERT INTO schema_version VALUES (2)")
    con.close()
    return ["trend"]


@case("unknown target")
def trend_target_matching_nothing(ws):
    return ["trend", "--target", "iphone-nope"]


@case("unknown run 'nope'")
def unknown_run_in_report(ws):
    return ["report", "nope"]


@case("unknown variant name 'nope'")
def build_only_matching_nothing(ws):
    return ["models", "build", "--only", "nope"]


@case("manifest.json")
def variant_manifest_wrong_types_in_eval(ws):
    _edit_json(_variant(ws) / "manifest.json", lambda m: m.update(image_size="large"))
    return ["eval", str(_variant(ws)), "--limit", "2"]


@case("resamples")
def negative_resamples_eval_compare(ws):
    return ["eval-compare", str(_eval_record(ws)), str(_eval_record(ws)), "--resamples", "-1"]


@case("--timeout")
def zero_timeout_device_status(ws):
    return ["devices", "status", "--timeout", "0"]


@case("run.yaml:1")
def run_yaml_not_a_mapping(ws):
    _write(ws / "run.yaml", "- 1\n- 2\n")
    return ["run", str(ws / "run.yaml")]


@case("unknown target 'nope'")
def unknown_target_before_any_build(ws):
    return ["run", "--targets", "nope", "--no-eval", "--no-report"]


@case("eval limit")
def negative_eval_limit_before_training(ws):
    return ["train-builtin", "--out", str(ws / "trained"), "--eval-limit", "-1"]


# -- bring your own model (issue 11) -----------------------------------------------------------------------------
@case("notes.txt")
def import_a_file_that_is_not_core_ml(ws):
    _write(ws / "notes.txt", "not a model\n")
    return ["models", "import", str(ws / "notes.txt")]


@case("junk.mlmodel")
def import_a_garbled_mlmodel(ws):
    _write(ws / "junk.mlmodel", os.urandom(200))
    return ["models", "import", str(ws / "junk.mlmodel")]


@case("gone.mlpackage")
def import_a_good_package_and_a_missing_one(ws):
    return ["models", "import", str(_variant(ws) / "encoder.mlpackage"), str(ws / "gone.mlpackage")]


@case("matrix.yaml:2")
def matrix_package_entry_with_a_recipe(ws):
    _write(ws / "matrix.yaml", f"variants:\n  - {{package: {_variant(ws) / 'encoder.mlpackage'}, prune: {{sparsity: 0.5}}}}\n")
    return ["models", "build", str(ws / "matrix.yaml")]


@case("run.yaml:2")
def run_yaml_generic_inputs_zero(ws):
    _write(ws / "run.yaml", "generic:\n  inputs: 0\n")
    return ["run", str(ws / "run.yaml")]
