"""Bring your own model, fed the user's own inputs (run.yaml `generic: {inputs_from: FILE.npz | FOLDER}`): every way
such a file can fail to fit the model ends in one line naming the file, the array and the input — before a run is
stored, whether `bench run` or the library's start_run is asked — and values are never changed on the way in; a run
(and its resume) feeds every job the input set it began with.

Real models made with coremltools inside the session (tests/byo_fixtures.py). Faked: only the Core ML runtime (a
Mac's), tests/byo_fixtures.FakeCoreML, which cannot exist on Linux; refusals never reach it, and where a run measures,
its scenario is set by the test (a GPU load that fails until fixed, a user who edits the .npz during the first job)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from bench.build import imported
from bench.cli import main
from bench.errors import InputError
from bench.paths import Workspace
from bench.run.generic import GenericSettings, make_inputs
from byo_fixtures import FakeCoreML, workspace  # noqa: F401  (the fixture: a fresh BENCH_ROOT workspace)

MODELS = ("two_inputs", "stateful", "image_input", "enumerated")  # float32 + int32, float16, uint8 pixels, enumerated


@pytest.fixture(scope="module")
def interfaces(byo_packages, tmp_path_factory):
    """Each model's interface as `bench models import` records it (imported once for the module)."""
    results = imported.import_models([byo_packages[name] for name in MODELS], Workspace(tmp_path_factory.mktemp("ws")))
    return {result.name: result.manifest["interface"] for result in results}


def npz(**arrays):
    def write(folder: Path) -> Path:
        np.savez(folder / "in.npz", **arrays)
        return folder / "in.npz"
    return write


def zip_with(member: str, data: bytes):
    def write(folder: Path) -> Path:
        with zipfile.ZipFile(folder / "in.npz", "w") as archive:
            archive.writestr(member, data)
        return folder / "in.npz"
    return write


def corrupted(folder: Path) -> Path:
    """An .npz whose array bytes changed after it was written (its zip CRC no longer matches)."""
    path = npz(a=np.ones((1, 4), np.float32), b=np.ones((1, 4), np.int32))(folder)
    data = bytearray(path.read_bytes())
    data[120] ^= 0xFF  # inside a.npy's data
    path.write_bytes(bytes(data))
    return path


def image_folder(*files: tuple[str, bytes | None]):
    def write(folder: Path) -> Path:
        from PIL import Image

        (folder / "images").mkdir()
        for name, data in files:
            if data is None:
                Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "images" / name)
            else:
                (folder / "images" / name).write_bytes(data)
        return folder / "images"
    return write


def png_header(side: int) -> bytes:
    """A valid PNG header promising side × side pixels: a decompression bomb in 60 bytes, which Pillow refuses."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


A, B = np.ones((1, 4), np.float32), np.ones((1, 4), np.int32)
BAD = {  # case: (model, the user's file or folder, what the one line must say[, generic.shapes])
    "int64 beyond int32": ("two_inputs", npz(a=A, b=np.array([[1, 2, 2**40, 4]], np.int64)),
                           r"in.npz: array 'b' is int64 and holds 1099511627776 at \[0, 2\], outside int32's range "
                           r"-2147483648..2147483647; input 'b' takes int32 \[1, 4\]"),
    "float64 beyond float16": ("stateful", npz(x=np.array([[1.0, 70000.0, 0.0, 0.0]])),
                               r"array 'x' is float64 and holds 70000.0 at \[0, 1\], beyond float16's range ±65504; "
                               r"input 'x' takes float16 \[1, 4\]"),
    "NaN in integers": ("two_inputs", npz(a=A, b=np.array([[1.0, 2.0, np.nan, 4.0]], np.float32)),
                        r"array 'b' is float32 and holds nan at \[0, 2\], not a number; input 'b' takes int32"),
    "fraction in integers": ("two_inputs", npz(a=A, b=np.full((1, 4), 2.5)),
                             r"array 'b' is float64 and holds 2.5 at \[0, 0\], not a whole number"),
    "int not exact in float32": ("two_inputs", npz(a=np.array([[0, 2**24 + 1, 0, 0]]), b=B),
                                 r"array 'a' is int64 and holds 16777217 at \[0, 1\], which float32 cannot hold "
                                 r"exactly; input 'a' takes float32 \[1, 4\]"),
    "negative pixels": ("image_input", npz(image=np.full((8, 8, 3), -1, np.int8)),
                        r"array 'image' is int8 and holds -1 at \[0, 0, 0\], outside uint8's range 0..255; input "
                        r"'image' takes uint8 \[8, 8, 3\] \(an image"),
    "strings": ("two_inputs", npz(a=np.array([["x"] * 4]), b=B), r"array 'a' is <U1; input 'a' takes float32 \[1, 4\]"),
    "arrays the model does not take": (
        "two_inputs", npz(a=A, b=B, c=A, mask=A),
        r"in.npz: arrays 'a', 'b', 'c', 'mask' do not match the model's inputs \(unknown 'c', 'mask'\); "
        r"it takes 'a' \(float32 \[1, 4\]\), 'b' \(int32 \[1, 4\]\)$"),
    "empty array": ("two_inputs", npz(a=np.zeros((0, 1, 4), np.float32), b=B),
                    r"array 'a' is empty \(shape \[0, 1, 4\]\); input 'a' takes float32 \[1, 4\]"),
    "shape not enumerated": ("enumerated", npz(x=np.zeros((1, 3, 9, 9), np.float32)),
                             r"array 'x' has shape \[1, 3, 9, 9\]; input 'x' takes float32 one of \[1, 3, 8, 8\], "
                             r"\[1, 3, 16, 16\] \(or \[N, …\] for N inputs\)"),
    "array shape other than generic.shapes": ("enumerated", npz(x=np.zeros((1, 3, 8, 8), np.float32)),
                                              r"in.npz: array 'x' holds shape \[1, 3, 8, 8\], but `generic.shapes` "
                                              r"asks \[1, 3, 16, 16\]", {"x": [1, 3, 16, 16]}),
    "generic.shapes for an image": ("image_input", image_folder(("a.png", None)),
                                    r"shape given for 'image', which takes uint8 \[8, 8, 3\] \(an image.*only "
                                    r"multi-array inputs", {"image": [1, 3, 16, 16]}),
    "unequal counts": ("two_inputs", npz(a=np.ones((5, 1, 4), np.float32), b=np.ones((3, 1, 4), np.int32)),
                       r"the arrays hold different numbers of inputs \('a': 5, 'b': 3\)"),
    "more inputs than generic.inputs": (
        "two_inputs", npz(a=np.ones((9, 1, 4), np.float32), b=np.ones((9, 1, 4), np.int32)),
        r"in.npz: holds 9 inputs, more than `generic.inputs` \(8\): set `generic: \{inputs: 9\}` in run.yaml"),
    "zip of a text file": ("two_inputs", zip_with("a.txt", b"1 2 3 4"),
                           r"in.npz: 'a.txt' in the archive is not an .npy array"),
    "corrupted npz": ("two_inputs", corrupted, r"in.npz: not a readable .npz \(Bad CRC-32 for file 'a.npy'\)"),
    "object array": ("two_inputs", npz(a=np.array([[{}, 1, 2, 3]], dtype=object), b=B),
                     r"in.npz: array 'a' holds Python objects; give arrays of numbers"),
    "folder without images": ("image_input", image_folder(("notes.txt", b"x"), ("photo.heic", b"x")),
                              r"images: no images \(.png, .*\); it holds notes.txt, photo.heic$"),
    "folder with a decompression bomb": ("image_input", image_folder(("a.png", None), ("b.png", png_header(2**15))),
                                         r"b.png: not a readable image \(Image size \(1073741824 pixels\) exceeds"),
    "more images than generic.inputs": ("image_input", image_folder(*[(f"{i}.png", None) for i in range(9)]),
                                        r"images: holds 9 inputs, more than `generic.inputs` \(8\)"),
}


@pytest.mark.parametrize("case", BAD)
def test_inputs_that_do_not_fit_are_one_line_naming_file_array_and_input(interfaces, tmp_path, case):
    model, write, message, *shapes = BAD[case]
    source = write(tmp_path)
    settings = GenericSettings(inputs=8, source=str(source), shapes=shapes[0] if shapes else {})
    with pytest.raises(InputError, match=message) as caught:
        make_inputs(interfaces[model], settings)
    assert "\n" not in str(caught.value)


def test_a_shape_outside_an_inputs_ranges_names_them(byo_packages, workspace, tmp_path):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import get_new_symbol

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, get_new_symbol(), get_new_symbol()))],
                opset_version=ct.target.iOS17)
    def pooled(x):
        return mb.reduce_mean(x=x, axes=[2, 3], name="pooled")

    package = tmp_path / "ranged.mlpackage"
    ct.convert(pooled, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, inputs=[ct.TensorType(
        name="x", shape=(1, 3, ct.RangeDim(8, 32, default=8), ct.RangeDim(8, 64, default=8)))]).save(str(package))
    (ranged,) = imported.import_models([package], workspace)
    interface = ranged.manifest["interface"]
    fits = npz(x=np.zeros((2, 1, 3, 16, 64), np.float32))(tmp_path)
    assert [s.features["x"].shape for s in make_inputs(interface, GenericSettings(source=str(fits)))] == [(1, 3, 16, 64)] * 2
    with pytest.raises(InputError, match=r"in.npz: array 'x' has shape \[1, 3, 40, 8\]; input 'x' takes float32 "
                                         r"\[1, 3, 8..32, 8..64\] \(or \[N, …\] for N inputs\)$"):
        make_inputs(interface, GenericSettings(source=str(npz(x=np.zeros((1, 3, 40, 8), np.float32))(tmp_path))))


def test_casts_that_keep_every_value_are_fed(interfaces, tmp_path):
    # numpy's defaults (int64, float64) are what users save: fed when every value survives the cast, in the input's
    # dtype; float64 is rounded to float16 (all the model receives), never a finite value made infinite
    source = npz(a=np.array([[[1, 2, 3, 4]], [[5, 6, 7, 8]]]), b=np.array([[[1.0, 2, 3, 4]], [[0, -1, 2**31 - 1, 7]]]))
    (first, second) = make_inputs(interfaces["two_inputs"], GenericSettings(source=str(source(tmp_path))))
    assert first.features["a"].dtype == np.float32 and first.features["b"].dtype == np.int32
    assert second.features["b"].tolist() == [[0, -1, 2**31 - 1, 7]] and second.features["a"].tolist() == [[5, 6, 7, 8]]
    x = np.array([[0.1, -65504.0, 1e-9, 3.0]])
    (only,) = make_inputs(interfaces["stateful"], GenericSettings(source=str(npz(x=x)(tmp_path))))
    assert only.features["x"].dtype == np.float16 and only.features["x"].tolist() == x.astype(np.float16).tolist()


def config_file(folder: Path, source: Path) -> Path:
    config = folder / "run.yaml"
    config.write_text(f"generic:\n  inputs_from: {source}\n")
    return config


@pytest.mark.parametrize("case", ["int64 beyond int32", "arrays the model does not take",
                                  "more inputs than generic.inputs", "corrupted npz"])
def test_bench_run_refuses_them_in_one_line_and_stores_nothing(byo_packages, workspace, tmp_path, capsys, case):
    model, write, message, *_ = BAD[case]
    imported.import_models([byo_packages[model]], workspace)
    config = config_file(tmp_path, write(tmp_path))
    capsys.readouterr()
    assert main(["run", str(config), "--variants", model, "--targets", "iphone"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {model}: {tmp_path}"), err
    assert __import__("re").search(message.rstrip("$"), err), err
    assert not workspace.results_dir.exists()


def test_start_run_refuses_them_before_a_run_is_stored(byo_packages, workspace, tmp_path):
    # was: the Mac target cast int64 2**40 into int32 and measured the wrapped value; with a missing array the run
    # was stored with every job failed (a "measurement failure" a resume repeats). Now the library refuses as the
    # CLI does, with the same check, before a target is touched or a folder made.
    from bench.run.api import start_run
    from bench.run.config import RunConfig
    from bench.run.targets.base import ImageItem
    from bench.run.targets.macos_coreml import MacCoreMLTarget

    imported.import_models([byo_packages["two_inputs"]], workspace)
    _, write, message = BAD["int64 beyond int32"]
    core_ml = FakeCoreML()
    config = RunConfig.model_validate({"variants": ["two_inputs"], "targets": ["macos-coreml"],
                                       "compute_units": ["cpuOnly"], "evaluate": False, "report": False,
                                       "generic": {"inputs_from": str(write(tmp_path))}})
    with pytest.raises(InputError, match=r"^two_inputs: .*" + message):
        start_run(config, workspace, targets=[MacCoreMLTarget(core_ml=core_ml)],
                  images=[ImageItem("unused", lambda: None)], sleep=lambda seconds: None)
    assert core_ml.compiled == []
    assert not workspace.results_dir.exists() or not any(workspace.results_dir.iterdir())


class FailingGPU(FakeCoreML):
    """The scenario: loading on cpuAndGPU fails (a crash of the Mac's Core ML) until the test says it is fixed."""

    gpu_fails = True

    def load(self, compiled, compute_unit, function):
        if self.gpu_fails and compute_unit == "cpuAndGPU":
            raise RuntimeError("Core ML crashed loading on the GPU")
        return super().load(compiled, compute_unit, function)


def test_a_resume_feeds_the_inputs_the_run_began_with_or_is_refused(byo_packages, workspace, tmp_path):
    # was: resuming any run of an imported model failed ("expected a bench.variant record, found 'bench.imported'");
    # and nothing tied a resume to the inputs the run began with: an .npz edited in between would have fed other
    # values to the variants measured second, and their drift would compare outputs of different inputs
    from bench.errors import RecordError
    from bench.run.api import resume_run, start_run
    from bench.run.config import RunConfig
    from bench.run.targets.base import ImageItem
    from bench.run.targets.macos_coreml import MacCoreMLTarget

    imported.import_models([byo_packages["two_inputs"]], workspace)
    source = npz(a=np.ones((2, 1, 4)), b=np.arange(8).reshape(2, 1, 4))(tmp_path)
    original = source.read_bytes()
    core_ml = FailingGPU()
    measure = {"targets": [MacCoreMLTarget(core_ml=core_ml)], "images": [ImageItem("unused", lambda: None)],
               "sleep": lambda seconds: None}
    config = RunConfig.model_validate({"variants": ["two_inputs"], "targets": ["macos-coreml"], "rounds": 1,
                                       "compute_units": ["cpuOnly", "cpuAndGPU"], "evaluate": False, "report": False,
                                       "retry": {"attempts": 1}, "generic": {"inputs_from": str(source)}})
    outcome = start_run(config, workspace, **measure)
    assert outcome.status == "incomplete" and len(outcome.failures) == 1
    stored = {p: p.read_bytes() for p in outcome.run_dir.rglob("*") if p.is_file()}
    core_ml.gpu_fails = False

    npz(a=np.ones((2, 1, 4)), b=np.arange(1, 9).reshape(2, 1, 4))(tmp_path)  # the user edits the file meanwhile
    with pytest.raises(RecordError, match=r"the inputs of two_inputs \(.*in.npz\) are not the ones this run began "
                                          r"with \(sha256 differs\); restore them, or start a new run"):
        resume_run(outcome.run_id, workspace, **measure)
    npz(a=np.ones((2, 1, 4)), b=np.array([[[1, 2, 3, 2**40]]] * 2))(tmp_path)  # or breaks it
    with pytest.raises(InputError, match=r"^two_inputs: .*in.npz: array 'b' is int64 and holds 1099511627776"):
        resume_run(outcome.run_id, workspace, **measure)
    assert {p: p.read_bytes() for p in outcome.run_dir.rglob("*") if p.is_file()} == stored  # nothing touched

    source.write_bytes(original)
    resumed = resume_run(outcome.run_id, workspace, **measure)
    assert resumed.status == "complete", resumed.failures


class EditsTheInputsOnce(FakeCoreML):
    """The scenario: while the first job compiles, the user rewrites the run's .npz (other values, same shapes)."""

    def __init__(self, source: Path):
        super().__init__()
        self.source = source

    def compile(self, package):
        if not self.compiled:
            npz(a=np.full((2, 1, 4), 3.0), b=np.arange(8).reshape(2, 1, 4))(self.source.parent)
        return super().compile(package)


def test_inputs_changed_while_the_run_measures_fail_the_later_jobs_not_feed_them(byo_packages, workspace, tmp_path):
    # was: every job made its inputs from the file as it was then; jobs after the edit fed other values, and the
    # drift of those variants or units compared outputs of different inputs without a word
    from bench.run.api import resume_run, start_run
    from bench.run.config import RunConfig
    from bench.run.targets.base import ImageItem
    from bench.run.targets.macos_coreml import MacCoreMLTarget

    imported.import_models([byo_packages["two_inputs"]], workspace)
    source = npz(a=np.ones((2, 1, 4)), b=np.arange(8).reshape(2, 1, 4))(tmp_path)
    original = source.read_bytes()
    core_ml = EditsTheInputsOnce(source)
    measure = {"targets": [MacCoreMLTarget(core_ml=core_ml)], "images": [ImageItem("unused", lambda: None)],
               "sleep": lambda seconds: None}
    config = RunConfig.model_validate({"variants": ["two_inputs"], "targets": ["macos-coreml"], "rounds": 1,
                                       "compute_units": ["cpuOnly", "cpuAndGPU"], "evaluate": False, "report": False,
                                       "retry": {"attempts": 1}, "adaptive": {"ci_width": None},
                                       "generic": {"inputs_from": str(source)}})
    outcome = start_run(config, workspace, **measure)
    ((_, why),) = outcome.failures
    assert why == (f"InputError: {source}: changed since the run began (sha256 of the input set differs); not "
                   "measured — restore it, then resume the run")
    source.write_bytes(original)
    assert resume_run(outcome.run_id, workspace, **measure).status == "complete"


def test_a_relative_inputs_from_is_the_same_file_when_resumed_from_another_folder(byo_packages, workspace, tmp_path,
                                                                                  monkeypatch):
    # was: run.json kept "in.npz" as typed; a resume started elsewhere (a nightly script's folder) found no file
    from bench.run.api import resume_run, start_run
    from bench.run.config import RunConfig
    from bench.run.targets.base import ImageItem
    from bench.run.targets.macos_coreml import MacCoreMLTarget

    imported.import_models([byo_packages["two_inputs"]], workspace)
    npz(a=np.ones((1, 1, 4)), b=np.arange(4).reshape(1, 1, 4))(tmp_path)
    core_ml = FailingGPU()
    measure = {"targets": [MacCoreMLTarget(core_ml=core_ml)], "images": [ImageItem("unused", lambda: None)],
               "sleep": lambda seconds: None}
    monkeypatch.chdir(tmp_path)
    config = RunConfig.model_validate({"variants": ["two_inputs"], "targets": ["macos-coreml"], "rounds": 1,
                                       "compute_units": ["cpuOnly", "cpuAndGPU"], "evaluate": False, "report": False,
                                       "retry": {"attempts": 1}, "adaptive": {"ci_width": None},
                                       "generic": {"inputs_from": "in.npz"}})
    outcome = start_run(config, workspace, **measure)
    assert outcome.status == "incomplete"
    core_ml.gpu_fails = False
    monkeypatch.chdir(workspace.root)
    assert resume_run(outcome.run_id, workspace, **measure).status == "complete"
