"""The compression matrix: validation happens before any work, and every problem is one actionable line."""

from __future__ import annotations

import pytest

from bench.build.matrix import Schedule, load_matrix, matrix_from_dict
from bench.errors import InputError
from bench.paths import DEFAULT_MATRIX


def write(tmp_path, text: str):
    path = tmp_path / "matrix.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_seed_iterative_schedule_expands_to_the_published_sparsities():
    assert Schedule(step=0.2, iterations=5).sparsities() == [0.2, 0.36, 0.488, 0.5904, 0.67232]
    matrix = matrix_from_dict({"variants": [{"name": "prune", "prune": {"schedule": {"step": 0.2}}}]})
    assert [p.name for p in matrix.planned()] == ["prune-0.2", "prune-0.36", "prune-0.488", "prune-0.59", "prune-0.672"]


def test_default_matrix_loads_and_covers_the_seed_study():
    names = [p.name for p in load_matrix(DEFAULT_MATRIX).planned()]
    for expected in ("fp32", "fp16", "int8", "prune-0.2", "prune-0.672", "conv-prune-0.2", "embedding-prune-0.4"):
        assert expected in names


def test_defaults_apply_and_entries_override(tmp_path):
    matrix = load_matrix(write(tmp_path, "defaults: {target: iOS18, precision: fp16}\nvariants:\n"
                                         "  - {name: a}\n  - {name: b, precision: fp32}\n"))
    recipes = {p.name: p.recipe for p in matrix.planned()}
    assert (recipes["a"].target, recipes["a"].precision) == ("iOS18", "fp16")
    assert recipes["b"].precision == "fp32"


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "variants:\n  - name: a\n    prune: {sparsity: 0.5\n")
    with pytest.raises(InputError) as err:
        load_matrix(path)
    assert str(path) in str(err.value) and ":4:" in str(err.value) or ":3:" in str(err.value)


def test_unknown_compression_name_suggests_the_right_one(tmp_path):
    path = write(tmp_path, "variants:\n  - name: a\n  - name: b\n    palletize: {bits: 4}\n")
    with pytest.raises(InputError) as err:
        load_matrix(path)
    message = str(err.value)
    assert f"{path}:4:" in message and "did you mean 'palettize'" in message


def test_unknown_layer_selection_and_mode_suggest(tmp_path):
    path = write(tmp_path, "variants:\n  - name: a\n    prune: {sparsity: 0.2}\n    layers: {select: embeding}\n")
    with pytest.raises(InputError, match="did you mean 'embedding'"):
        load_matrix(path)
    path = write(tmp_path, "variants:\n  - name: a\n    palettize: {bits: 4, mode: kmean}\n")
    with pytest.raises(InputError, match="did you mean 'kmeans'"):
        load_matrix(path)


@pytest.mark.parametrize(
    "entry, reason",
    [
        ({"quantize": {"bits": 4}, "target": "iOS16"}, "int4 quantization needs target iOS18"),
        ({"prune": {"n_m": [2, 4]}, "target": "iOS17"}, "n:m pruning needs target iOS18"),
        ({"prune": {"sparsity": 0.5}, "palettize": {"bits": 4}}, r"joint pruning \+ palettization needs target iOS18"),
        ({"quantize": {"bits": 8}, "palettize": {"bits": 4}}, "cannot be combined"),
        ({"palettize": {"bits": 4, "granularity": "per_grouped_channel"}}, "grouped-channel palettization needs"),
        ({"layers": {"select": "conv"}}, "no prune/quantize/palettize"),
        ({"prune": {"sparsity": 0.5, "sparsities": [0.2]}}, "exactly one of"),
    ],
)
def test_unsupported_combinations_are_rejected_with_the_reason(tmp_path, entry, reason):
    with pytest.raises(InputError, match=reason):
        matrix_from_dict({"variants": [{"name": "x", **entry}]})


def test_unsupported_combination_in_yaml_points_at_the_entry(tmp_path):
    path = write(tmp_path, "variants:\n  - name: ok\n  - name: bad\n    target: iOS16\n    quantize: {bits: 4}\n")
    with pytest.raises(InputError) as err:
        load_matrix(path)
    assert f"{path}:3:" in str(err.value) and "iOS18" in str(err.value)


def test_duplicate_names_after_expansion_are_rejected():
    with pytest.raises(InputError, match="duplicate variant name 'p-0.2'"):
        matrix_from_dict({"variants": [{"name": "p", "prune": {"sparsities": [0.2, 0.2]}}]})
