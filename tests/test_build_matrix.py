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
    for expected in ("fp32", "fp16", "int8", "prune-0.2", "prune-0.672", "conv-prune-0.2", "embedding-prune-0.4",
                     "input-48-resize", "input-48-crop", "input-64-crop", "input-80-crop"):
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


def test_input_axes_expand_into_one_variant_per_size_and_mode(tmp_path):
    matrix = load_matrix(write(tmp_path, "defaults: {image_size: 64}\nvariants:\n  - name: in\n"
                                         "    image_sizes: [48, 80]\n    resizes: [resize, center_crop]\n"
                                         "    crop_fraction: 0.875\n  - {name: plain}\n"))
    planned = {p.name: p.recipe for p in matrix.planned()}
    assert list(planned) == ["in-48-resize", "in-48-crop", "in-80-resize", "in-80-crop", "plain"]
    assert (planned["in-80-crop"].image_size, planned["in-80-crop"].resize) == (80, "center_crop")
    # the crop fraction belongs to the crops; resized variants keep the default (and their cache key)
    assert planned["in-48-crop"].crop_fraction == 0.875 and planned["in-48-resize"].crop_fraction == 1.0
    assert "crop_fraction" not in planned["in-48-resize"].key_fields()
    assert planned["in-48-crop"].key_fields()["crop_fraction"] == 0.875
    assert planned["plain"].image_size == 64  # the default applies where the entry lists no sizes


def test_input_axes_cross_with_a_sparsity_schedule_and_a_source():
    matrix = matrix_from_dict({"variants": [{"name": "p", "source": "builtin-large", "image_sizes": [48],
                                             "prune": {"sparsities": [0.2, 0.4]}}]})
    assert [(p.name, p.source, p.recipe.image_size) for p in matrix.planned()] == [
        ("p-48-0.2", "builtin-large", 48), ("p-48-0.4", "builtin-large", 48)]


@pytest.mark.parametrize("entry, line, message", [
    ("    resize: crop\n", 3, "unknown resize mode 'crop'; did you mean 'center_crop'"),
    ("    resizes: [resize, centre]\n", 3, "did you mean 'center_crop'"),
    ("    image_sizes: [48, 4000]\n", 3, "input size 4000 is outside 16..1024"),
    ("    image_size: 8\n", 3, "greater than or equal to 16"),
    ("    image_size: 48\n    image_sizes: [64]\n", 2, "give either image_size or image_sizes"),
    ("    crop_fraction: 0.9\n", 2, "crop_fraction applies to resize: center_crop only"),
    ("    source: builtin-larg\n", 3, "unknown built-in captioner 'builtin-larg'; did you mean 'builtin-large'"),
])
def test_bad_input_axis_values_are_one_line_with_file_and_line(tmp_path, entry, line, message):
    path = write(tmp_path, "variants:\n  - name: a\n" + entry)
    with pytest.raises(InputError) as err:
        load_matrix(path)
    assert str(err.value).startswith(f"{path}:{line}:") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_decoder_axis_composes_with_sparsity_lists_and_names_the_cached_variant():
    matrix = matrix_from_dict({"defaults": {"target": "iOS18"}, "variants": [
        {"name": "p", "prune": {"sparsities": [0.2, 0.4]}, "decoder": ["recompute", "kv_cache"]},
        {"name": "q", "quantize": {"bits": 4, "granularity": "per_block"}, "decoder": "kv_cache"},
        {"name": "s", "image_sizes": [48, 80], "decoder": ["recompute", "kv_cache"]}]})
    planned = {p.name: p.recipe for p in matrix.planned()}
    assert list(planned) == ["p-0.2", "p-0.2+kv", "p-0.4", "p-0.4+kv", "q", "s-48", "s-48+kv", "s-80", "s-80+kv"]
    assert [planned[n].decoder for n in ("p-0.2", "p-0.2+kv", "q")] == ["recompute", "kv_cache", "kv_cache"]
    assert planned["p-0.4+kv"].prune.sparsity == 0.4 and planned["s-80+kv"].image_size == 80
    # The default decoder is not in the cache key: variants built before the axis existed keep their ids.
    assert "decoder" not in planned["p-0.2"].key_fields() and planned["q"].key_fields()["decoder"] == "kv_cache"


def test_default_matrix_measures_both_decoders_for_its_ios18_variants():
    planned = {p.name: p.recipe for p in load_matrix(DEFAULT_MATRIX).planned()}
    ios18 = [name for name, recipe in planned.items() if recipe.target == "iOS18" and recipe.decoder == "recompute"]
    assert ios18 and all(planned[f"{name}+kv"].decoder == "kv_cache" for name in ios18)
    assert all(recipe.target == "iOS18" for recipe in planned.values() if recipe.decoder == "kv_cache")


@pytest.mark.parametrize("text, line", [
    ("variants:\n  - name: ok\n  - name: kv\n    decoder: kv_cache\n", 3),
    ("defaults: {target: iOS17, decoder: [recompute, kv_cache]}\nvariants:\n  - name: a\n", 3),
])
def test_kv_cache_below_ios18_is_refused_with_file_and_line(tmp_path, text, line):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as err:
        load_matrix(path)
    message = str(err.value)
    assert f"{path}:{line}:" in message and "kv_cache" in message and "iOS18" in message and "\n" not in message


def test_decoder_lists_name_each_decoder_once():
    with pytest.raises(InputError, match="each once"):
        matrix_from_dict({"variants": [{"name": "x", "target": "iOS18", "decoder": ["kv_cache", "kv_cache"]}]})
