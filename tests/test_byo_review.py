"""Bring your own model, as a hostile new user tries it (review of issue 11): inputs that look fine until the
analysis reads them, imports that ask to change a stored variant, and .npz files that are not .npz files. Packages are
made with coremltools inside the session (tests/byo_fixtures.py); nothing here needs Core ML's runtime."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.build import imported
from bench.cli import main
from bench.errors import InputError
from bench.paths import Workspace
from byo_fixtures import workspace  # noqa: F401  (the fixture: a fresh BENCH_ROOT workspace)


def everything_under(workspace: Workspace) -> list[str]:
    """Every file and folder of the imported area, scratch folders included (what a failure may leave behind)."""
    root = imported.imported_root(workspace)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.is_dir() else []


def truncated_copy(byo_packages, tmp_path: Path) -> Path:
    """A package whose weight file was cut short (an interrupted copy): its description reads fine, its weights not."""
    copy = tmp_path / "truncated.mlpackage"
    shutil.copytree(byo_packages["dense"], copy)
    weights = next(copy.rglob("weight.bin"))
    weights.write_bytes(weights.read_bytes()[:100])
    return copy


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_a_truncated_package_after_a_good_one_stores_nothing_and_names_the_users_file(byo_packages, workspace,
                                                                                     tmp_path, capsys):
    bad = truncated_copy(byo_packages, tmp_path)
    capsys.readouterr()
    assert main(["models", "import", str(byo_packages["two_inputs"]), str(bad)]) == 2
    err = one_error_line(capsys)
    assert str(bad) in err and ".import-" not in err, err  # not the scratch copy, which is gone by now
    assert everything_under(workspace) == []  # the good one before it was not stored either


def test_a_truncated_matrix_package_stores_none_of_the_matrix_packages(byo_packages, workspace, tmp_path):
    from bench.build.builder import build_matrix
    from bench.build.matrix import load_matrix

    bad = truncated_copy(byo_packages, tmp_path)
    matrix = workspace.root / "matrix.yaml"
    matrix.write_text(f"variants:\n  - package: {byo_packages['two_inputs']}\n  - package: {bad}\n")
    with pytest.raises(InputError, match="truncated.mlpackage"):
        build_matrix(load_matrix(matrix), workspace)
    assert everything_under(workspace) == []


def test_reimporting_under_another_family_or_as_reference_is_refused_not_ignored(byo_packages, workspace, capsys):
    first = imported.import_models([byo_packages["pruned"]], workspace, family="conv")[0]
    manifest = (Path(first.manifest["directory"]) / imported.MANIFEST).read_bytes()
    capsys.readouterr()
    assert main(["models", "import", str(byo_packages["pruned"]), "--family", "other"]) == 2
    assert "in family 'conv'" in one_error_line(capsys)
    assert main(["models", "import", str(byo_packages["pruned"]), "--family", "conv", "--reference"]) == 2
    assert "another --name" in one_error_line(capsys)
    assert (Path(first.manifest["directory"]) / imported.MANIFEST).read_bytes() == manifest  # unchanged
    assert len(imported.list_imported(workspace)) == 1
    # what the line suggests works; the same request again without a new family is simply the stored copy
    assert main(["models", "import", str(byo_packages["pruned"]), "--name", "pruned-ref", "--family", "conv",
                 "--reference"]) == 0
    assert imported.families(workspace)["conv"]["reference"].startswith("pruned-ref-")
    assert imported.import_models([byo_packages["pruned"]], workspace)[0].status == "cached"


@pytest.mark.parametrize("name, write", [
    ("inputs.npz", lambda path: path.write_text("x = [1, 2, 3, 4]\n")),  # numpy: "contains pickled data… unsafely"
    ("inputs.npy", lambda path: __import__("numpy").save(path, __import__("numpy").zeros((1, 4), "float32"))),
])  # a lone .npy loads as an array, not an archive: it was a TypeError traceback
def test_a_file_that_is_not_an_npz_is_one_line_without_suggesting_pickle(tmp_path, name, write):
    from bench.run.generic import GenericSettings, make_inputs

    interface = {"default_function": "main", "functions": {"main": {"inputs": [
        {"name": "x", "kind": "multiarray", "dtype": "float32", "shape": [1, 4], "optional": False}],
        "outputs": [], "states": []}}}
    path = tmp_path / name
    write(path)
    with pytest.raises(InputError) as caught:
        make_inputs(interface, GenericSettings(source=str(path)))
    message = str(caught.value)
    assert "not an .npz" in message and "pickle" not in message and "\n" not in message


def test_an_import_named_like_a_built_variant_is_refused(bad_input_template, byo_packages, tmp_path, monkeypatch,
                                                         capsys):
    root = tmp_path / "built"
    shutil.copytree(bad_input_template, root)  # holds the built variant "tiny"
    monkeypatch.setenv("BENCH_ROOT", str(root))
    capsys.readouterr()
    assert main(["models", "import", str(byo_packages["dense"]), "--name", "tiny"]) == 2
    assert "name of a built variant" in one_error_line(capsys)
    assert everything_under(Workspace(root)) == []


def test_a_name_shared_by_a_built_and_an_imported_variant_means_the_built_one():
    # the imported one was there first (its name free then); `bench models build` later made a built one of that
    # name. Picked by the last id, the run measured whichever hash sorted last: here the imported model.
    from bench.run.plan import select_variants
    from bench.run.targets.base import VariantRef

    built = VariantRef("fp32-0000aaaa0000", "fp32", "0000aaaa0000")
    imported_one = VariantRef("fp32-ffffbbbbffff", "fp32", "ffffbbbbffff", source={"origin": "imported"})
    assert select_variants([built, imported_one], ["fp32"]) == [built]
    assert select_variants([built, imported_one], ["fp32-ffffbbbbffff"]) == [imported_one]  # still by its id


def test_a_typo_in_an_imported_name_is_answered_with_the_imported_names(byo_packages, workspace, capsys):
    capsys.readouterr()
    assert main(["models", "inspect", "pruned"]) == 2  # nothing built or imported yet: how to get some
    assert "`bench models import PATH`" in one_error_line(capsys)
    imported.import_models([byo_packages["pruned"]], workspace)
    assert main(["models", "inspect", "prunde"]) == 2  # was: the built variants' "run `bench models build`"
    assert "did you mean 'pruned'" in one_error_line(capsys)
    assert main(["run", "--variants", "prunde", "--targets", "iphone"]) == 2  # was: only the matrix's names
    assert "did you mean 'pruned'" in one_error_line(capsys)


def test_a_failed_job_line_shows_its_mark_not_raw_markup():
    # the progress log escapes what it prints (errors carry paths and device names); its own ✗ / ↻ marks were
    # escaped with it, and every failed job printed a literal "[red]✗[/]"
    from types import SimpleNamespace

    from rich.console import Console

    from bench.run.stats import StopRule
    from bench.run.progress import LiveProgress

    console = Console(record=True, width=200, force_terminal=False)
    live = LiveProgress(console, StopRule(), images=1)
    target = SimpleNamespace(id="iphone-1", name="Phone [1]", label="Core ML")
    live.run_started("run-1", [target], {})
    live.job_finished("iphone-1", SimpleNamespace(job_key="mlp--cpuOnly"), None, "InputError: x.npz: bad [shape]")
    live.retrying("iphone-1", "tunnel [lost]", 2.0)
    live.__exit__(None, None, None)
    text = console.export_text()
    assert "✗ iphone-1 mlp--cpuOnly: InputError: x.npz: bad [shape]" in text
    assert "↻ iphone-1: tunnel [lost] — retrying in 2s" in text
    assert "[red]" not in text and "[yellow]" not in text and "[/]" not in text


@pytest.mark.parametrize("generic, message", [
    ("inputs_from: {bad}", "missing 'b'"),
    ("inputs_from: {empty}", "an image folder feeds a model with one image input"),
    ("shapes: {{a: [1, 5]}}", "has the fixed shape [1, 4]"),
    ("function: nope", "unknown function 'nope'"),
])
def test_bad_generic_settings_are_one_line_before_a_run_is_started(byo_packages, workspace, tmp_path, capsys,
                                                                   generic, message):
    # was: the run started, contacted the phone, stored a run whose only job failed, and said to resume it (which
    # would fail the same way); no phone is needed to know the inputs do not fit
    import numpy as np

    imported.import_models([byo_packages["two_inputs"]], workspace)
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=np.ones((1, 4), np.float32))
    (tmp_path / "empty").mkdir()
    config = tmp_path / "run.yaml"
    config.write_text("generic:\n  " + generic.format(bad=bad, empty=tmp_path / "empty") + "\n")
    capsys.readouterr()
    assert main(["run", str(config), "--variants", "two_inputs", "--targets", "iphone"]) == 2
    err = one_error_line(capsys)
    assert err.startswith("error: two_inputs: ") and message in err, err
    assert not workspace.results_dir.exists()


@pytest.mark.parametrize("file, name", [("réseau_ü.mlpackage", "reseau_u"), ("Modèle v2.mlpackage", "Modele-v2"),
                                        ("モデル.mlmodel", "model"), ("_x.y.mlpackage", "x.y")])
def test_default_names_keep_the_letters_of_accented_file_names(file, name):
    # was "r-seau_-" for réseau_ü.mlpackage
    assert imported.default_name(Path(file)) == name


def test_inspecting_an_imported_model_whose_manifest_is_damaged_says_so(byo_packages, workspace, capsys):
    result = imported.import_models([byo_packages["pruned"]], workspace)[0]
    (Path(result.manifest["directory"]) / imported.MANIFEST).write_text('{"kind": "bench.imported", ')
    capsys.readouterr()
    assert main(["models", "inspect", "pruned"]) == 2  # was: "unknown variant 'pruned'"
    err = one_error_line(capsys)
    assert "manifest.json" in err and "import it again" in err, err
