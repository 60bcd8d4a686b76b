"""Property-based bad input (Hypothesis): damaged YAML (run, matrix, devices), dataset manifests (JSONL, CSV), parquet
tables, run.json, eval records, job records and Core ML packages, each fed to the real CLI (bench.cli.main).

For every generated damage: the exit code is non-zero, stderr is exactly one line that is not the "please report"
fallback, there is no traceback, and every stored file is byte-identical afterwards. Each generator only produces
input that is certainly invalid (a wrong type, an out-of-range number, an unknown key, bytes that are not UTF-8, a
cut file), so a pass is never a damaged input accepted by luck.

Bounded: a fixed number of examples per property, derandomized (the same examples on every run and in CI), no
example database; the whole module takes seconds beyond the shared template (tests/bad_input_cases.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bad_input_cases import RUN, snapshot
from bench.cli import main

# No shrinking: a failing example is already small (one damaged field), and shrinking re-runs the CLI for minutes.
BOUNDED = settings(max_examples=5, deadline=None, derandomize=True, database=None,
                   phases=[Phase.explicit, Phase.generate],
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------- bad values
# Values no numeric or boolean field accepts (pydantic's lax mode turns "5" into 5, so strings start with a letter).
not_a_number = st.one_of(st.text(st.characters(codec="utf-8", categories=["L"]), min_size=1, max_size=8)
                         .map(lambda s: "x" + s), st.lists(st.integers(), max_size=2), st.just({"a": 1}))
negative = st.integers(min_value=-10**12, max_value=-1)
unknown_key = st.from_regex(r"[a-z]{3,10}_zz", fullmatch=True)


def run_cli(template: Path, damage, capsys) -> tuple[int, str, bool]:
    """Copy the template, damage it, run the command it names; return (exit code, stderr, stored data unchanged)."""
    root = Path(tempfile.mkdtemp(prefix="bench-prop-")) / "ws"
    try:
        shutil.copytree(template, root)
        argv = damage(root)
        before = snapshot(root)
        capsys.readouterr()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("BENCH_ROOT", str(root))
            patch.chdir(root)
            code = main(argv)
        return code, capsys.readouterr().err.strip(), snapshot(root) == before
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


@pytest.fixture
def cli(bad_input_template, capsys):
    def check(damage) -> None:
        code, err, unchanged = run_cli(bad_input_template, damage, capsys)
        assert code not in (0, 3), (code, err)  # 3: the "unexpected … please report" fallback
        assert err.startswith("error: ") and "\n" not in err, err
        assert "Traceback" not in err and "please report" not in err, err
        assert unchanged, "stored data changed"

    return check


def _yaml(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


# ---------------------------------------------------------------------------------------------- YAML
RUN_NUMBERS = ("images", "rounds", "repeats", "warmup", "seed", "host_threads", "eval_images")


@BOUNDED
@given(key=st.sampled_from(RUN_NUMBERS), value=st.one_of(not_a_number, negative), unknown=unknown_key,
       mode=st.sampled_from(["value", "unknown key", "not utf-8", "cut"]), cut=st.integers(1, 30))
def test_damaged_run_yaml(cli, key, value, unknown, mode, cut):
    def damage(root):
        plan = {"images": 4, "rounds": 2, "evaluate": False, "report": False}
        if mode == "value":
            plan[key] = value
        elif mode == "unknown key":
            plan[unknown] = 1
        text = _yaml(plan).encode()
        if mode == "not utf-8":
            text = text[:cut] + b"\xff\xfe" + text[cut:]
        elif mode == "cut":
            text = b"adaptive: {ci_width: [0.1" + text[:cut]  # an unclosed flow sequence
        (root / "run.yaml").write_bytes(text)
        return ["run", str(root / "run.yaml")]

    cli(damage)


@BOUNDED
@given(field=st.sampled_from([("prune", "sparsity"), ("quantize", "bits"), ("palettize", "bits"), ("image_size",),
                              ("decoder_length",), ("min_elements",)]),
       value=st.one_of(not_a_number, negative), unknown=unknown_key, mode=st.sampled_from(["value", "unknown key"]))
def test_damaged_matrix_yaml(cli, field, value, unknown, mode):
    def damage(root):
        entry: dict = {"name": "v1"}
        if mode == "value":
            entry.update({field[0]: {field[1]: value}} if len(field) == 2 else {field[0]: value})
        else:
            entry[unknown] = 1
        (root / "matrix.yaml").write_text(_yaml({"source": "builtin", "variants": [entry]}))
        return ["models", "build", str(root / "matrix.yaml")]

    cli(damage)


@BOUNDED
@given(key=st.sampled_from(["udid", "name", "tags", "enabled"]),
       value=st.one_of(st.lists(st.lists(st.integers(), min_size=1), min_size=1), st.just({"a": [1]})),
       unknown=unknown_key, mode=st.sampled_from(["value", "unknown key", "not a list"]))
def test_damaged_devices_yaml(cli, key, value, unknown, mode):
    def damage(root):
        device = {"name": "lab1", "udid": "00008120-000000000000AA01", "model": "iPhone15,2", "ios": "17"}
        if mode == "value":
            device[key] = value
        elif mode == "unknown key":
            device[unknown] = 1
        devices = {"devices": [device] if mode != "not a list" else {"x": device}}
        (root / "devices.yaml").write_text(_yaml(devices))
        return ["devices"]

    cli(damage)


# ---------------------------------------------------------------------------------------------- dataset manifests
@BOUNDED
@given(field=st.sampled_from(["image", "captions", "split"]),
       value=st.one_of(st.integers(), st.just([]), st.just({"a": 1}), st.just("no-such-split-x")),
       row=st.integers(0, 2), mode=st.sampled_from(["value", "not json", "not utf-8", "not an object"]))
def test_damaged_jsonl_manifest(cli, field, value, row, mode):
    def damage(root):
        lines = (root / "data" / "manifest.jsonl").read_text().splitlines()
        record = json.loads(lines[row])
        if mode == "value":
            record[field] = value if not (field == "image" and isinstance(value, str)) else "missing.png"
            lines[row] = json.dumps(record)
        elif mode == "not json":
            lines[row] = lines[row][: len(lines[row]) // 2]
        elif mode == "not an object":
            lines[row] = json.dumps([record])
        data = "\n".join(lines).encode() + b"\n"
        if mode == "not utf-8":
            data = data.replace(b"captions", b"capt\xffions", 1)
        (root / "data" / "bad.jsonl").write_bytes(data)
        return ["data", "show", f"manifest:{root / 'data' / 'bad.jsonl'}"]

    cli(damage)


@BOUNDED
@given(mode=st.sampled_from(["fields", "no header", "not utf-8", "empty image", "missing image", "bad split"]),
       row=st.integers(0, 2))
def test_damaged_csv_manifest(cli, mode, row):
    def damage(root):
        rows = [f"img{i:03d}.png,a caption {i},{'test'}" for i in range(3)]
        header = "image,caption,split"
        if mode == "fields":
            rows[row] += ",extra"
        elif mode == "no header":
            header = "picture,words"
        elif mode == "empty image":
            rows[row] = ",a caption,test"
        elif mode == "missing image":
            rows[row] = "gone.png,a caption,test"
        elif mode == "bad split":
            rows[row] = f"img{row:03d}.png,a caption,holiday"
        data = ("\n".join([header, *rows]) + "\n").encode()
        if mode == "not utf-8":
            data = data.replace(b"caption 1", b"caption \xc3\x28", 1)
        (root / "data" / "bad.csv").write_bytes(data)
        return ["data", "show", f"manifest:{root / 'data' / 'bad.csv'}"]

    cli(damage)


# ---------------------------------------------------------------------------------------------- run store
@BOUNDED
@given(table=st.sampled_from(["samples.parquet", "jobs.parquet", "compute_plans.parquet"]),
       mode=st.sampled_from(["cut", "garbage", "column type", "column gone"]), keep=st.floats(0, 0.98),
       garbage=st.binary(min_size=1, max_size=64))
def test_damaged_parquet_tables(cli, table, mode, keep, garbage):
    def damage(root):
        import pandas as pd

        path = root / "results" / RUN / table
        data = path.read_bytes()
        if mode == "cut":
            path.write_bytes(data[: int(len(data) * keep)])
        elif mode == "garbage":
            path.write_bytes(data[:-8] + garbage)  # the footer's length and magic overwritten
        else:
            frame = pd.read_parquet(path)
            column = {"samples.parquet": "latency_ns", "jobs.parquet": "round",
                      "compute_plans.parquet": "op_name"}[table]
            if mode == "column gone":
                frame = frame.drop(columns=[column])
            elif table == "compute_plans.parquet":
                frame = frame.drop(columns=["variant_id"])
            else:
                frame[column] = "x"
            frame.to_parquet(path)
        return ["compare", "nightly-2026-11-27", RUN]

    cli(damage)


def _leaf_paths(data, prefix=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaf_paths(value, (*prefix, key))
    elif isinstance(data, list) and data:
        yield from _leaf_paths(data[0], (*prefix, 0))
    yield prefix


def _set(data, path, value):
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


RUN_JSON_TYPED = [("run_id",), ("jobs",), ("created_at",), ("status",), ("seed",), ("plan",), ("environment",),
                  ("tables_written",)]


@BOUNDED
@given(path=st.sampled_from(RUN_JSON_TYPED), value=st.one_of(st.just([1, 2]), st.just(3.5), st.just({"x": None})),
       mode=st.sampled_from(["value", "cut", "not an object", "schema"]), cut=st.integers(1, 200))
def test_damaged_run_json(cli, path, value, mode, cut):
    def damage(root):
        manifest_path = root / "results" / RUN / "run.json"
        manifest = json.loads(manifest_path.read_text())
        if mode == "value":
            wrong = value if not (path[0] in ("plan", "environment", "jobs") and isinstance(value, dict)) else [value]
            _set(manifest, path, wrong)
            manifest_path.write_text(json.dumps(manifest))
        elif mode == "cut":
            manifest_path.write_text(manifest_path.read_text()[:cut])
        elif mode == "not an object":
            manifest_path.write_text(json.dumps([manifest]))
        else:
            manifest["schema_version"] = 99
            manifest_path.write_text(json.dumps(manifest))
        return ["report", RUN]

    cli(damage)


EVAL_TYPED = [("subject",), ("dataset",), ("dataset", "signature"), ("dataset", "n"), ("metrics",),
              ("metrics", "bleu"), ("metrics", "bleu", "score"), ("metrics", "bleu", "ci95"), ("metrics", "cider"),
              ("metrics", "cider", "score"), ("per_image",), ("per_image", 0), ("per_image", 0, "image_id"),
              ("per_image", 0, "caption"), ("per_image", 0, "references")]


@BOUNDED
@given(path=st.sampled_from(EVAL_TYPED), value=st.one_of(st.just({"x": 1}), st.just([[1]]), st.just(None)))
def test_damaged_eval_record(cli, path, value):
    def damage(root):
        record_path = next((root / "results" / "evals").glob("fp32-*/*.json"))
        record = json.loads(record_path.read_text())
        _set(record, path, value if path[-1] != "subject" else [value])
        record_path.write_text(json.dumps(record))
        return ["eval-compare", str(record_path), str(record_path)]

    cli(damage)


JOB_TYPED = [("job_key",), ("round",), ("variant_id",), ("compute_unit",), ("target",), ("target", "kind"),
             ("target", "id"), ("samples",), ("samples", 0), ("samples", 0, "image_id"), ("samples", 0, "total_ns"),
             ("samples", 0, "decoder_ns"), ("warmup",)]


@BOUNDED
@given(path=st.sampled_from(JOB_TYPED), value=st.one_of(st.just({"x": 1}), st.just([[1]]), st.just(-1.5)),
       which=st.integers(0, 5), tables=st.booleans())
def test_damaged_job_record(cli, path, value, which, tables):
    def damage(root):
        run = root / "results" / RUN
        job_path = sorted((run / "jobs").glob("*.json"))[which]
        job = json.loads(job_path.read_text())
        _set(job, path, value if path[-1] not in ("samples", "warmup", "decoder_ns") else {"x": value})
        job_path.write_text(json.dumps(job))
        if not tables:  # an unfinished run: the tables are built from the job records
            manifest = json.loads((run / "run.json").read_text())
            manifest["tables_written"] = False
            (run / "run.json").write_text(json.dumps(manifest))
        return ["compare", "nightly-2026-11-27", RUN]

    cli(damage)


# ---------------------------------------------------------------------------------------------- packages
@BOUNDED
@given(part=st.sampled_from(["Data/com.apple.CoreML/model.mlmodel", "Manifest.json"]),
       package=st.sampled_from(["encoder", "decoder"]), keep=st.floats(0, 0.9),
       garbage=st.binary(min_size=1, max_size=32), mode=st.sampled_from(["cut", "garbage"]))
def test_damaged_package(cli, part, package, keep, garbage, mode):
    def damage(root):
        variant = next((root / "models" / "variants").glob("tiny-*"))
        path = variant / f"{package}.mlpackage" / part
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)] if mode == "cut" else b"\x00{" + garbage + data[len(garbage):])
        return ["models", "inspect", str(variant / f"{package}.mlpackage")]

    cli(damage)
