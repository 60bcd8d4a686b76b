"""Bring your own model, static side: `bench models import`, families, matrix `package:` entries, inspect/diff, and
the one line a machine without a phone or a Mac gives. Packages are made with coremltools inside the session
(tests/byo_fixtures.py); nothing here needs Core ML's runtime."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench.build import imported
from bench.cli import main
from bench.errors import DamagedError, InputError
from bench.paths import Workspace
from byo_fixtures import workspace  # noqa: F401  (the fixture: a fresh BENCH_ROOT workspace)


def stored(workspace: Workspace) -> list[str]:
    root = imported.imported_root(workspace)
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_a_conv_family_is_imported_content_addressed_analysed_and_referenced(byo_packages, workspace):
    paths = [byo_packages[name] for name in ("pruned", "palettized", "int8", "dense")]
    results = imported.import_models(paths, workspace, family="conv")
    by_name = {r.name: r.manifest for r in results}
    assert [r.status for r in results] == ["imported"] * 4
    # measured from the stored bytes, exactly as for built variants
    assert by_name["pruned"]["measured"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert by_name["pruned"]["measured"]["decompression_ops"] == {"constexpr_sparse_to_dense": 2}
    assert by_name["palettized"]["measured"]["decompression_ops"] == {"constexpr_lut_to_dense": 2}
    assert 4.0 <= by_name["palettized"]["measured"]["bits_per_weight"] < 4.5
    assert by_name["int8"]["measured"]["decompression_ops"] == {"constexpr_affine_dequantize": 2}
    assert by_name["dense"]["measured"]["bits_per_weight"] == 32.0
    # provenance: where from, when, and the package's own metadata
    provenance = by_name["dense"]["provenance"]
    assert provenance["source_path"] == str(byo_packages["dense"].resolve())
    assert provenance["imported_at"]
    assert provenance["package_metadata"]["user_defined"]["com.github.apple.coremltools.version"]
    # default reference: the least compressed member, whatever the import order
    assert imported.families(workspace)["conv"]["reference"] == results[3].variant_id
    # the same bytes again: the stored copy is reused, same id
    again = imported.import_models([byo_packages["dense"]], workspace, family="conv")
    assert again[0].status == "cached" and again[0].variant_id == results[3].variant_id
    # an explicit reference wins over "least compressed"
    marked = imported.import_models([byo_packages["int8"]], workspace, name="int8-ref", family="conv", reference=True)
    assert imported.families(workspace)["conv"]["reference"] == marked[0].variant_id
    # the id is the content hash: same bytes under one name, one folder
    assert len(stored(workspace)) == 5
    assert all(name.rsplit("-", 1)[1] == imported.read_imported(imported.imported_root(workspace) / name)
               ["content_sha256"][:12] for name in stored(workspace))


def test_damaged_imported_bytes_are_refused(byo_packages, workspace, capsys):
    result = imported.import_models([byo_packages["pruned"]], workspace)[0]
    directory = Path(result.manifest["directory"])
    weights = next((directory / "model.mlpackage").rglob("weight.bin"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DamagedError, match="weight.bin: content changed"):
        imported.check_imported(directory, full=True)
    capsys.readouterr()
    assert main(["models", "inspect", "pruned"]) == 2
    assert "weight.bin" in capsys.readouterr().err
    assert main(["models", "verify", "--full"]) == 1  # verify covers imported variants too
    assert "DAMAGED" in capsys.readouterr().out
    # importing the intact package again replaces the damaged copy
    assert imported.import_models([byo_packages["pruned"]], workspace)[0].status == "imported"
    imported.check_imported(directory, full=True)


def test_interfaces_of_dtypes_enumerated_shapes_states_and_functions(byo_packages, workspace):
    names = ("two_inputs", "enumerated", "stateful", "multifunction")
    manifests = {r.name: r.manifest for r in imported.import_models([byo_packages[n] for n in names], workspace)}
    two = manifests["two_inputs"]["interface"]["functions"]["main"]["inputs"]
    assert [(f["name"], f["dtype"], f["shape"]) for f in two] == [("a", "float32", [1, 4]), ("b", "int32", [1, 4])]
    (x,) = manifests["enumerated"]["interface"]["functions"]["main"]["inputs"]
    assert x["enumerated_shapes"] == [[1, 3, 8, 8], [1, 3, 16, 16]] and x["shape"] == [1, 3, 8, 8]
    stateful = manifests["stateful"]["interface"]["functions"]["main"]
    assert stateful["states"] == [{"name": "acc", "optional": False, "kind": "state", "dtype": "float16",
                                   "shape": [1, 4]}]
    multi = manifests["multifunction"]["interface"]
    assert multi["default_function"] == "dense" and set(multi["functions"]) == {"dense", "adder"}
    assert [f["dtype"] for f in multi["functions"]["adder"]["inputs"]] == ["float32", "int32"]


def test_a_neural_network_mlmodel_file_is_stored_checked_and_listed(byo_packages, workspace, capsys):
    result = imported.import_models([byo_packages["neural_network"]], workspace)[0]
    manifest = result.manifest
    assert manifest["package"]["path"] == "model.mlmodel" and manifest["interface"]["model_type"] == "neuralNetwork"
    assert manifest["measured"]["op_counts"] == {"innerProduct": 1}
    assert list(manifest["integrity"]["files"]) == ["model.mlmodel"]
    imported.check_imported(manifest["directory"], full=True)
    assert main(["models", "inspect", "neural_network"]) == 2  # no ML-program tensors: said in one line
    assert "only ML programs (.mlpackage) are analysed per tensor" in capsys.readouterr().err


def test_cli_import_list_inspect_diff_and_the_no_core_ml_line(byo_packages, workspace, capsys):
    assert main(["models", "import", str(byo_packages["dense"]), str(byo_packages["pruned"]), "--family", "conv"]) == 0
    out = capsys.readouterr().out
    assert "dense-" in out and "pruned-" in out and "conv" in out
    assert "measuring an imported model needs Core ML: an iPhone" in out and "neither is here" in out
    assert main(["models", "ls"]) == 0
    listing = capsys.readouterr().out
    assert "sparse_to_dense×2" in listing and str(byo_packages["pruned"].resolve()) in listing
    assert main(["models", "diff", "dense", "pruned"]) == 0
    diff = capsys.readouterr().out
    assert "constexpr_sparse_to_dense" in diff and "dense float32" in diff and "sparse float32" in diff
    assert main(["models", "inspect", "pruned", "--no-tensors"]) == 0
    assert "constexpr_sparse_to_dense" in capsys.readouterr().out
    # measuring needs a phone or a Mac: one line, nothing stored
    assert main(["run", "--variants", "pruned", "--no-eval", "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pruned is an imported model" in err and "bench models inspect pruned" in err
    assert not (workspace.results_dir).exists() or not any(workspace.results_dir.iterdir())
    # a lab measures built captioners only: said in one line before the lab is contacted
    assert main(["run", "--variants", "pruned", "--lab", "127.0.0.1:9", "--no-eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "a lab (--lab) measures built captioners only" in err


@pytest.mark.parametrize("make_bad, message", [
    (lambda tmp: tmp / "missing.mlpackage", "no such file or folder"),
    (lambda tmp: (tmp / "notes.txt").write_text("hello") and tmp / "notes.txt", "not a Core ML model"),
    (lambda tmp: (tmp / "empty.mlpackage").mkdir() or tmp / "empty.mlpackage", "not a Core ML package"),
    (lambda tmp: (tmp / "junk.mlmodel").write_bytes(b"\xff\x00junk" * 10) and tmp / "junk.mlmodel",
     "not a Core ML model specification"),
])
def test_bad_paths_are_one_line_and_nothing_is_stored(byo_packages, workspace, tmp_path, capsys, make_bad, message):
    bad = make_bad(tmp_path)
    capsys.readouterr()
    # a good package before the bad one: still nothing stored (every path is checked first)
    assert main(["models", "import", str(byo_packages["dense"]), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert stored(workspace) == []


def test_an_unreadable_package_file_is_one_line(byo_packages, workspace, tmp_path, capsys):
    copy = tmp_path / "broken.mlpackage"
    shutil.copytree(byo_packages["dense"], copy)
    weights = next(copy.rglob("weight.bin"))
    weights.unlink()
    weights.symlink_to(tmp_path / "elsewhere" / "weight.bin")  # dangling: the bytes cannot be read
    assert main(["models", "import", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot be read" in err, err
    assert stored(workspace) == []


def test_matrix_package_entries_mixed_with_built_ones(byo_packages, workspace, tmp_path):
    from bench.build.builder import build_matrix
    from bench.build.matrix import load_matrix

    matrix = workspace.root / "matrix.yaml"
    relative = os.path.relpath(byo_packages["pruned"], workspace.root)
    matrix.write_text(
        "variants:\n"
        "  - name: fp32\n"
        f"  - {{package: {byo_packages['dense']}, family: conv}}\n"
        f"  - packages: [{relative}, {byo_packages['int8']}]\n"
        "    family: conv\n"
        f"  - {{package: {byo_packages['stateful']}, name: acc}}\n")
    loaded = load_matrix(matrix)
    assert [p.name for p in loaded.planned()] == ["fp32"]
    assert [i.label for i in loaded.imports()] == ["dense", "pruned", "int8", "acc"]
    only_packages = workspace.root / "packages.yaml"
    only_packages.write_text(matrix.read_text().replace("  - name: fp32\n", ""))
    report = build_matrix(load_matrix(only_packages), workspace)  # no captioner needed for packages alone
    assert [(r.name, r.status) for r in report.results] == [("dense", "imported"), ("pruned", "imported"),
                                                            ("int8", "imported"), ("acc", "imported")]
    assert imported.families(workspace)["conv"]["reference"].startswith("dense-")
    assert [r.status for r in build_matrix(load_matrix(only_packages), workspace).results] == ["cached"] * 4


@pytest.mark.parametrize("entry, message", [
    ("{package: x.mlpackage, quantize: {bits: 8}}", "`quantize` is a build recipe"),
    ("{packages: [a.mlpackage], name: a}", "`name` and `reference` name one package"),
    ("{package: a.mlpackage, packages: [b.mlpackage]}", "not both"),
    ("{name: x, family: f}", "belong to imported packages"),
    ("{package: a.mlpackage, famly: f}", "did you mean 'family'"),
])
def test_bad_matrix_package_entries_name_file_and_line(workspace, entry, message):
    from bench.build.matrix import load_matrix

    matrix = workspace.root / "matrix.yaml"
    matrix.write_text(f"variants:\n  - name: fp32\n  - {entry}\n")
    with pytest.raises(InputError, match=message) as caught:
        load_matrix(matrix)
    assert f"{matrix}:3:" in str(caught.value)


def test_a_missing_matrix_package_stores_nothing(byo_packages, workspace):
    from bench.build.builder import build_matrix
    from bench.build.matrix import load_matrix

    matrix = workspace.root / "matrix.yaml"
    matrix.write_text(f"variants:\n  - package: {byo_packages['dense']}\n  - package: gone.mlpackage\n")
    with pytest.raises(InputError, match="gone.mlpackage: no such file"):
        build_matrix(load_matrix(matrix), workspace)
    assert stored(workspace) == []


def test_imported_manifest_is_sealed(byo_packages, workspace):
    result = imported.import_models([byo_packages["dense"]], workspace)[0]
    path = Path(result.manifest["directory"]) / "manifest.json"
    record = json.loads(path.read_text())
    record["family"] = "other"
    path.write_text(json.dumps(record))
    with pytest.raises(DamagedError, match="its own hash differs"):
        imported.check_imported(path.parent)


def test_the_default_run_says_which_imported_models_it_left_out(byo_packages, workspace):
    from bench.run.api import _imported_not_measured
    from bench.run.config import RunConfig

    assert _imported_not_measured(RunConfig(targets=["host-torch"]), workspace) == []  # none imported
    imported.import_models([byo_packages["dense"]], workspace)
    (here,) = _imported_not_measured(RunConfig(targets=["host-torch"]), workspace)
    assert "1 imported model not measured by the default run" in here and "needs Core ML" in here
    (phone,) = _imported_not_measured(RunConfig(targets=["iphone"]), workspace)
    assert "name them with --variants" in phone
    assert _imported_not_measured(RunConfig(targets=["iphone"], variants=["dense"]), workspace) == []
