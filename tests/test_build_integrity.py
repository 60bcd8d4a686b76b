"""Nothing damaged is ever measured (issue 10, item 1): every stored variant's files are checked before use.

Real: the builder (coremltools conversion of a tiny random BLIP captioner), `bench eval`, `bench run` on host-torch
(scheduler, store), the deploy layer pushing to the protocol-level fake iPhone over pymobiledevice3, `bench explain`,
`bench models build|verify`, and bench.build.integrity itself. Faked: the iPhone (tests/fake_iphone), because none
exists here. Damage is done the way a disk, a user or a script does it: bytes flipped in place, files truncated,
deleted, added, replaced by symlinks, made unreadable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from deploy_fixtures import add_phone, job_spec, make_inputs, mux  # noqa: F401  (fixture)

MATRIX = {"variants": [{"name": "fp32"}, {"name": "int8", "quantize": {"bits": 8}}]}
RUN_CONFIG = {"seed": 0, "rounds": 1, "images": 1, "warmup": 0, "repeats": 1, "evaluate": False, "report": False,
              "adaptive": {"ci_width": None}, "targets": ["host-torch"]}


def _run(workspace_root: Path, variants: list, *, run_id: str):
    """`bench run` on host-torch over one synthetic image, through the library (what the CLI calls)."""
    from bench.data.base import open_dataset
    from bench.paths import Workspace
    from bench.run.api import start_run
    from bench.run.config import RunConfig
    from bench.run.targets.base import ImageItem
    from bench.run.targets.host_torch import HostTorchTarget

    sample = next(iter(open_dataset("synthetic", split="test", limit=1, seed=0)))
    images = [ImageItem(str(sample.image_id), sample.load_image, tuple(sample.captions))]
    return start_run(RunConfig.model_validate(RUN_CONFIG), Workspace(workspace_root), targets=[HostTorchTarget()],
                     variants=variants, images=images, run_id=run_id)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """fp32 and int8 of the tiny captioner, and one healthy host-torch run of both (for explain)."""
    import torch

    from bench.build.builder import build_matrix
    from bench.build.matrix import matrix_from_dict
    from bench.paths import Workspace
    from bench.run.api import built_variants
    from build_fixtures import save_tiny_captioner

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("integrity-ws")
    checkpoint = save_tiny_captioner(root / "tiny")
    report = build_matrix(matrix_from_dict({"source": str(checkpoint), **MATRIX}), Workspace(root))
    assert not report.failed, [r.error for r in report.failed]
    outcome = _run(root, built_variants(Workspace(root)), run_id="healthy")
    assert outcome.status == "complete", outcome.failures
    return root, checkpoint, {r.name: r.variant_id for r in report.results}


@pytest.fixture
def ws(built, tmp_path, monkeypatch):
    """A private copy of the built workspace (variants and the healthy run) that a test may damage."""
    root, checkpoint, ids = built
    copy = tmp_path / "ws"
    shutil.copytree(root / "models", copy / "models", symlinks=True)
    shutil.copytree(root / "results", copy / "results", symlinks=True)
    monkeypatch.setenv("BENCH_ROOT", str(copy))
    return copy, checkpoint, ids


def _variant(ws_root: Path, variant_id: str) -> Path:
    return ws_root / "models" / "variants" / variant_id


def _stored_files(variant: Path) -> list[str]:
    """Every file the build stored: both packages, weights_map.json and the manifest itself. Not the host weights a
    host-torch run materialised beside them (host-weights/, named and checked by their own hash: issue 16's tests
    in test_build_variants.py)."""
    found = [p.relative_to(variant).as_posix() for p in variant.rglob("*") if p.is_file()]
    return sorted(f for f in found if not f.startswith(".") and not f.startswith("host-weights/"))


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def _positions(size: int, rng: random.Random) -> list[int]:
    """First, last and one random byte: a sample, but of every file."""
    return sorted({0, size - 1, rng.randrange(size)})


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def _consumers_refuse(ws_root: Path, ids: dict, rel: str, planned, phone, capsys, monkeypatch) -> None:
    """Build (cache hit → rebuild), eval, run on host-torch, deploy to the phone and explain, each on the damaged
    fp32 variant: each refuses (or rebuilds) naming the damaged file."""
    from bench.build import builder
    from bench.build.matrix import matrix_from_dict
    from bench.cli import main
    from bench.deploy import api
    from bench.errors import DamagedError
    from bench.paths import Workspace

    fp32 = _variant(ws_root, ids["fp32"])
    named = Path(rel).name

    # build: the cache hit is refused and the variant rebuilt (the conversion itself is recorded, not run here;
    # test_a_damaged_variant_is_rebuilt_for_real runs one)
    rebuilt = []
    monkeypatch.setattr(builder, "_build_one", lambda session, item, *a, **k: rebuilt.append(item.name))
    checkpoint = json.loads((_variant(ws_root, ids["int8"]) / "manifest.json").read_text())["source"]["path"]
    report = builder.build_matrix(matrix_from_dict({"source": checkpoint, **MATRIX}), Workspace(ws_root))
    statuses = {r.name: r.status for r in report.results}
    assert rebuilt == ["fp32"] and statuses == {"fp32": "rebuilt", "int8": "cached"}, (rel, statuses)
    assert named in report.by_name()["fp32"].note
    monkeypatch.undo()
    monkeypatch.setenv("BENCH_ROOT", str(ws_root))

    # eval
    capsys.readouterr()
    assert main(["eval", ids["fp32"], "--data", "synthetic", "--limit", "1"]) != 0
    assert named in _one_line(capsys)

    # run on host-torch (planned while the variant was healthy): the job is refused, nothing is measured
    outcome = _run(ws_root, [planned], run_id=f"damaged-{len(list((ws_root / 'results').glob('damaged-*')))}")
    assert outcome.status == "incomplete" and len(outcome.data.samples) == 0, rel
    assert any("DamagedError" in error and named in error for _, error in outcome.failures), outcome.failures

    # deploy: refused before a byte reaches the phone
    with pytest.raises(DamagedError, match=named.replace(".", r"\.")):
        api.deploy(phone.udid, job_spec([ids["fp32"]]), {ids["fp32"]: fp32}, make_inputs())
    assert phone.model_bytes_written() == 0

    # explain (the healthy run measured both variants)
    capsys.readouterr()
    assert main(["explain", "int8", "fp32", "--run", str(ws_root / "results" / "healthy")]) != 0
    assert named in _one_line(capsys)


@pytest.mark.slow
def test_flipping_any_byte_of_any_stored_file_is_refused_by_every_consumer(ws, mux, capsys, monkeypatch):  # noqa: F811
    from bench.paths import Workspace
    from bench.run.api import built_variants

    ws_root, _, ids = ws
    fp32 = _variant(ws_root, ids["fp32"])
    planned = next(v for v in built_variants(Workspace(ws_root)) if v.name == "fp32")
    phone = add_phone(mux, 1)
    rng = random.Random(10)
    files = _stored_files(fp32)
    assert len(files) == 8  # 2 × (Manifest.json, model.mlmodel, weight.bin), weights_map.json, manifest.json
    flips = 0
    for rel in files:
        path = fp32 / rel
        for offset in _positions(path.stat().st_size, rng):
            original = path.read_bytes()
            _flip(path, offset)
            try:
                _consumers_refuse(ws_root, ids, rel, planned, phone, capsys, monkeypatch)
            finally:
                path.write_bytes(original)
            flips += 1
    assert flips >= 2 * len(files)
    from bench.build.integrity import check_variant

    check_variant(fp32, full=True)  # restored: healthy again, and every consumer would use it


def test_the_index_makes_a_check_cheap_and_an_edit_with_its_mtime_restored_is_still_caught(ws):
    from bench.build.integrity import RACY_SECONDS, check_variant
    from bench.errors import DamagedError

    ws_root, _, ids = ws
    variant = _variant(ws_root, ids["int8"])
    old = (os.stat(variant / "weights_map.json").st_mtime_ns - int(3 * RACY_SECONDS * 1e9)) / 1e9
    for path in variant.rglob("*"):  # as if built a while ago (copies are "racy": just written)
        if path.is_file():
            os.utime(path, (old, old))
    first = check_variant(variant)
    assert first.hashed == 7 and first.trusted == 0  # ctime is new (the copy): every file hashed once
    import time

    time.sleep(RACY_SECONDS + 0.1)
    check_variant(variant)
    second = check_variant(variant)
    assert second.hashed == 0 and second.trusted == 7 and second.bytes_hashed == 0
    assert check_variant(variant, full=True).hashed == 7
    weights = next(variant.glob("encoder.mlpackage/**/weight.bin"))
    stamp = os.stat(weights)
    _flip(weights, stamp.st_size // 2)
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # `touch -r`: mtime back, ctime cannot go back
    with pytest.raises(DamagedError, match="weight.bin: content changed since it was built"):
        check_variant(variant)


HOSTILE = {
    "truncated weight.bin": lambda v: os.truncate(next(v.glob("encoder.mlpackage/**/weight.bin")), 1000),
    "emptied model.mlmodel": lambda v: os.truncate(next(v.glob("decoder.mlpackage/**/model.mlmodel")), 0),
    "40 KB of weights overwritten": lambda v: _overwrite(next(v.glob("encoder.mlpackage/**/weight.bin")), 4096, 40960),
    "garbled package Manifest.json": lambda v: (v / "decoder.mlpackage" / "Manifest.json").write_text("{garbled"),
    "garbled manifest.json": lambda v: (v / "manifest.json").write_text("{garbled"),
    "edited manifest.json": lambda v: _edit_manifest(v),
    "deleted weight.bin": lambda v: next(v.glob("decoder.mlpackage/**/weight.bin")).unlink(),
    "deleted weights_map.json": lambda v: (v / "weights_map.json").unlink(),
    "deleted manifest.json": lambda v: (v / "manifest.json").unlink(),
    "added file": lambda v: (v / "encoder.mlpackage" / "Data" / "extra.bin").write_bytes(b"x"),
    "weight.bin replaced by a symlink to itself copied": lambda v: _symlink_copy(next(v.glob("encoder.mlpackage/**/weight.bin"))),
    "package replaced by a symlink": lambda v: _symlink_copy(v / "decoder.mlpackage"),
    "weights folder replaced by a file": lambda v: _replace_by_file(next(v.glob("encoder.mlpackage/**/weights"))),
    "manifest.json a folder": lambda v: ((v / "manifest.json").unlink(), (v / "manifest.json").mkdir()),
}
if os.geteuid() != 0:  # root reads anything: chmod 000 damages nothing for it
    HOSTILE["unreadable weight.bin"] = lambda v: os.chmod(next(v.glob("encoder.mlpackage/**/weight.bin")), 0)


def _overwrite(path: Path, offset: int, length: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(os.urandom(length))


def _edit_manifest(variant: Path) -> None:
    record = json.loads((variant / "manifest.json").read_text())
    record["measured"]["total_bytes"] += 1  # valid JSON, valid schema, a different fact
    (variant / "manifest.json").write_text(json.dumps(record))


def _symlink_copy(path: Path) -> None:
    """The same bytes, but through a symlink: a stored variant holds regular files only."""
    aside = path.parent / f".{path.name}.aside"
    os.replace(path, aside)
    os.symlink(aside.name, path)


def _replace_by_file(path: Path) -> None:
    shutil.rmtree(path)
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", sorted(HOSTILE))
def test_every_kind_of_damage_is_one_line_and_the_healthy_variant_still_passes(ws, damage, capsys):
    from bench.cli import main

    ws_root, _, ids = ws
    HOSTILE[damage](_variant(ws_root, ids["fp32"]))
    capsys.readouterr()
    assert main(["models", "verify"]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    lines = [" ".join(line.split()) for line in out.out.splitlines() if line.strip()]
    assert any(line.startswith(f"DAMAGED {ids['fp32']}:") for line in lines), out.out
    assert any(line.startswith(f"ok {ids['int8']}:") for line in lines), out.out  # never taken down with it
    assert main(["eval", ids["fp32"], "--data", "synthetic", "--limit", "1"]) != 0
    _one_line(capsys)


@pytest.mark.slow
def test_a_damaged_variant_is_rebuilt_for_real_and_a_healthy_one_is_measured_beside_it(ws, capsys):
    from bench.build.builder import build_matrix
    from bench.build.integrity import check_variant
    from bench.build.matrix import matrix_from_dict
    from bench.paths import Workspace
    from bench.run.api import built_variants

    ws_root, checkpoint, ids = ws
    fp32 = _variant(ws_root, ids["fp32"])
    _overwrite(next(fp32.glob("encoder.mlpackage/**/weight.bin")), 4096, 40960)  # the 40 KB

    # bench run: the damaged variant is refused, the healthy one measured, no "unexpected; please report"
    outcome = _run(ws_root, built_variants(Workspace(ws_root)), run_id="mixed")
    failures = dict(outcome.failures)
    assert outcome.status == "incomplete" and len(failures) == 1
    assert "weight.bin: content changed since it was built" in next(iter(failures.values()))
    assert "please report" not in next(iter(failures.values()))
    measured = outcome.data.samples
    assert set(measured["variant_id"]) == {ids["int8"]}

    # bench models build: rebuilt, byte for byte what was built before (the build is deterministic)
    report = build_matrix(matrix_from_dict({"source": str(checkpoint), **MATRIX}), Workspace(ws_root))
    assert {r.name: r.status for r in report.results} == {"fp32": "rebuilt", "int8": "cached"}
    assert "weight.bin" in report.by_name()["fp32"].note
    assert check_variant(fp32, full=True).hashed == 7


def test_force_rebuilds_only_the_named_variants_and_unknown_names_are_refused(ws, monkeypatch, capsys):
    from bench.build import builder
    from bench.build.matrix import matrix_from_dict
    from bench.errors import InputError
    from bench.paths import Workspace

    ws_root, checkpoint, ids = ws
    built = []
    monkeypatch.setattr(builder, "_build_one", lambda session, item, *a, **k: built.append(item.name))
    matrix = matrix_from_dict({"source": str(checkpoint), **MATRIX})
    report = builder.build_matrix(matrix, Workspace(ws_root), force=["int8"])
    assert built == ["int8"] and report.by_name()["int8"].note == "forced"
    assert report.by_name()["fp32"].status == "cached"
    with pytest.raises(InputError, match="unknown variant name 'int9'; did you mean 'int8'"):
        builder.build_matrix(matrix, Workspace(ws_root), force=["int9"])


def test_stale_tmp_folders_of_killed_builds_are_removed_by_the_next_build(ws, monkeypatch):
    from bench.build import builder
    from bench.build.matrix import matrix_from_dict
    from bench.paths import Workspace

    ws_root, checkpoint, ids = ws
    stale = ws_root / "models" / "variants" / f".{ids['fp32']}.k1ll3d.tmp"
    (stale / "encoder.mlpackage").mkdir(parents=True)
    (stale / "encoder.mlpackage" / "half.bin").write_bytes(b"\0" * 100)
    report = builder.build_matrix(matrix_from_dict({"source": str(checkpoint), **MATRIX}), Workspace(ws_root))
    assert {r.status for r in report.results} == {"cached"}
    assert not stale.exists()


def test_variants_built_before_file_hashes_are_verified_by_their_package_tree_hash(ws):
    """bench.variant v1 (no `integrity` block): verified exactly against each package's recorded tree hash."""
    from bench.build.integrity import check_variant
    from bench.build.variants import read_manifest
    from bench.errors import DamagedError

    ws_root, _, ids = ws
    variant = _variant(ws_root, ids["int8"])
    record = json.loads((variant / "manifest.json").read_text())
    del record["integrity"]
    (variant / "manifest.json").write_text(json.dumps({**record, "schema_version": 1}))
    assert read_manifest(variant).integrity is None  # migrated, not rewritten
    assert check_variant(variant).hashed == 6
    _flip(next(variant.glob("decoder.mlpackage/**/weight.bin")), 7)
    with pytest.raises(DamagedError, match=r"decoder\.mlpackage: changed since it was built"):
        check_variant(variant)


def test_a_fresh_process_explains_a_run_of_v2_variants(ws):
    """The report reads manifests without the builder imported: it must still know bench.variant v2 (and v1)."""
    import subprocess
    import sys

    ws_root, _, ids = ws
    env = {**os.environ, "BENCH_ROOT": str(ws_root), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "bench", "explain", "int8", "fp32", "--run", "healthy"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _flip(next(_variant(ws_root, ids["fp32"]).glob("encoder.mlpackage/**/weight.bin")), 3)
    done = subprocess.run([sys.executable, "-m", "bench", "explain", "int8", "fp32", "--run", "healthy"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "weight.bin: content changed since it was built" in done.stderr, done.stderr


def test_a_run_naming_a_variant_whose_manifest_is_unreadable_measures_the_others_and_says_so(ws):
    from bench.data.base import open_dataset
    from bench.errors import DamagedError
    from bench.paths import Workspace
    from bench.run.api import start_run
    from bench.run.config import RunConfig
    from bench.run.targets.base import ImageItem
    from bench.run.targets.host_torch import HostTorchTarget

    ws_root, _, ids = ws
    (_variant(ws_root, ids["fp32"]) / "manifest.json").write_text("{garbled")
    sample = next(iter(open_dataset("synthetic", split="test", limit=1, seed=0)))
    images = [ImageItem(str(sample.image_id), sample.load_image, tuple(sample.captions))]

    def run(names):
        config = RunConfig.model_validate({**RUN_CONFIG, "variants": names})
        return start_run(config, Workspace(ws_root), targets=[HostTorchTarget()], images=images)

    outcome = run(["fp32", "int8"])
    assert outcome.status == "complete" and set(outcome.data.samples["variant_id"]) == {ids["int8"]}
    assert any(note.startswith(f"variant {ids['fp32']} left out: ") and "manifest.json" in note
               for note in outcome.notes), outcome.notes
    with pytest.raises(DamagedError, match="manifest.json: corrupt record"):
        run(["fp32"])


def test_a_flipped_byte_in_the_integrity_key_does_not_downgrade_a_v2_manifest_to_unchecked(ws):
    """One byte of manifest.json turning `"integrity"` into `"integrhty"` must not make it look like a v1 record
    (whose manifest has no hash of its own and whose weights_map.json is not checked)."""
    from bench.build.integrity import check_variant
    from bench.errors import DamagedError

    ws_root, _, ids = ws
    manifest = _variant(ws_root, ids["int8"]) / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"integrity"', '"integrhty"', 1))
    with pytest.raises(DamagedError, match=r"manifest\.json: its integrity block is missing"):
        check_variant(manifest.parent)
