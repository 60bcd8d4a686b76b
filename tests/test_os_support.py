"""A lab's first day with real phones: a variant whose packages need a newer iOS than a phone runs is found by the
run plan before anything is pushed (bench/run/os_support.py) — skipped with one line by default, refused in one line
with --strict-os.

Real: coremltools-made packages (their specificationVersion as coremltools wrote it), `bench run` through the CLI,
pymobiledevice3's client over sockets (the phone's iOS is what lockdown reports), the store and the report. Faked,
because it cannot exist here: the phone (tests/fake_iphone; the scenario — an iOS 17.5 phone — is set by each test)
and its tunnel (fake_iphone/rsd.py).
"""

from __future__ import annotations

import json

import pytest

from bench.build import imported
from bench.cli import main
from byo_fixtures import workspace  # noqa: F401  (a fresh BENCH_ROOT workspace)
from deploy_fixtures import add_phone, mux, tunneld  # noqa: F401  (fixtures)

SKIP_LINE = "stateful needs iOS 18 (Core ML spec 9, model.mlpackage), Fake 1 runs iOS 17.5.1: not run"


def test_spec_table_matches_coremltools():
    """One table maps spec version → first iOS / macOS; it must say what coremltools says."""
    import coremltools as ct
    from coremltools.converters.mil._deployment_compatibility import AvailableTarget

    from bench.run.os_support import MIN_OS_BY_SPEC

    for major in (13, 14, 15, 16, 17, 18, 26):
        spec = getattr(ct, f"_SPECIFICATION_VERSION_IOS_{major}")
        assert MIN_OS_BY_SPEC[spec]["iOS"] == (major,)
    for name in ("macOS10_15", "macOS11", "macOS12", "macOS13", "macOS14", "macOS15", "macOS26"):
        version = tuple(int(part) for part in name.removeprefix("macOS").split("_"))
        assert MIN_OS_BY_SPEC[getattr(AvailableTarget, name).value]["macOS"] == version


def _old_phone(mux, tunneld):  # noqa: F811
    phone = add_phone(mux, 1, ios="17.5.1", build="21F90", product_type="iPhone15,2")
    tunneld.add(mux, phone)
    return phone


def _pushed_models(phone) -> set[str]:
    jobs = phone.container("org.bench.runner").joinpath("Documents/bench/jobs")
    return {m["variant_id"].rsplit("-", 1)[0] for job in jobs.glob("*/job.json")
            for m in json.loads(job.read_text())["models"]}


def test_bench_run_skips_a_variant_the_phones_ios_cannot_run_and_says_so_everywhere(
        mux, tunneld, byo_packages, workspace, capsys):  # noqa: F811
    phone = _old_phone(mux, tunneld)
    imported.import_models([byo_packages["dense"], byo_packages["stateful"]], workspace)  # spec 8 (iOS 17), 9 (18)
    code = main(["run", "--variants", "dense,stateful", "--targets", "iphone", "--compute-units", "cpuOnly",
                 "--fixed", "--rounds", "1", "--seed", "1"])
    out = capsys.readouterr()
    assert code == 0, out.err
    said = " ".join(out.out.split())
    assert f"skipped before the run: {SKIP_LINE}" in said  # at once, before a night of measuring
    assert said.count(f"skipped {SKIP_LINE}") == 1  # and in the run summary, one line
    assert _pushed_models(phone) == {"dense"}  # nothing of the skipped pair ever reached the phone

    (run_dir,) = workspace.results_dir.glob("2*")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["schema_version"] == 4
    (skipped,) = run["skipped"]
    assert (skipped["variant_name"], skipped["spec"], skipped["needs"], skipped["runs"], skipped["os_source"]) == \
        ("stateful", 9, "iOS 18", "17.5.1", "the device")
    assert not any(key.startswith("stateful") for key in run["jobs"])  # not a failed job: never planned

    from bench.report.data import build_report

    report = build_report(str(run_dir))
    assert set(report.table["variant"]) == {"dense"} and report.not_run == [SKIP_LINE]
    assert SKIP_LINE in (run_dir / "report.md").read_text()
    # the next night, with verdicts against the first: the skipped pair is no regression and no failure
    assert main(["run", "--variants", "dense,stateful", "--targets", "iphone", "--compute-units", "cpuOnly",
                 "--fixed", "--rounds", "1", "--seed", "2", "--no-eval"]) == 0
    capsys.readouterr()
    second = max(workspace.results_dir.glob("2*"), key=lambda p: p.stat().st_mtime)
    junit = workspace.root / "verdicts.xml"
    assert main(["report", second.name, "--baseline", run_dir.name, "--fail-on", "regression", "--junit",
                 str(junit), "--format", "markdown"]) == 0
    shown = capsys.readouterr().out
    assert SKIP_LINE in " ".join(shown.split()) and "**No regressions.**" in shown
    from xml.etree import ElementTree

    suite = ElementTree.parse(junit).getroot().find("testsuite")
    (case,) = [c for c in suite.iter("testcase") if c.get("classname") == "bench.not_run"]
    assert case.find("skipped").get("message") == SKIP_LINE and suite.get("failures") == "0"


def test_strict_os_refuses_the_whole_run_in_one_line_before_anything_is_pushed(
        mux, tunneld, byo_packages, workspace, capsys):  # noqa: F811
    phone = _old_phone(mux, tunneld)
    imported.import_models([byo_packages["dense"], byo_packages["stateful"]], workspace)
    code = main(["run", "--variants", "dense,stateful", "--targets", "iphone", "--compute-units", "cpuOnly",
                 "--fixed", "--rounds", "1", "--strict-os"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert err.startswith("error: refused (--strict-os): stateful needs iOS 18 (Core ML spec 9, model.mlpackage), "
                          "Fake 1 runs iOS 17.5.1;")
    assert phone.measure_jobs == 0 and not list(workspace.results_dir.glob("2*"))
    assert not phone.container("org.bench.runner").joinpath("Documents/bench/models").exists()


def test_built_kv_cache_variants_are_judged_by_their_stored_packages_not_the_recipe(kv_workspace, tmp_path):
    """Every variant of the kv workspace is built for iOS 18 (spec 9, read from its stored packages). On a phone
    that reports iOS 17.5 nothing can run: one line, before a job starts; devices.yaml's `ios:` stands in when the
    phone did not say (unpaired)."""
    from bench.errors import InputError
    from bench.paths import Workspace
    from bench.run.api import built_variants, start_run
    from bench.run.config import RunConfig
    from bench.run.os_support import requirement
    from bench.run.targets.iphone import IPhoneTarget

    workspace = Workspace(kv_workspace[0])
    variants = [v for v in built_variants(workspace) if v.name in ("fp32", "fp32+kv")]
    for variant in variants:
        assert (requirement(variant.path).spec, requirement(variant.path).minimum("iOS")) == (9, (18,))
    config = RunConfig.model_validate({"seed": 0, "rounds": 1, "images": 1, "evaluate": False, "report": False,
                                       "compute_units": ["all"], "adaptive": {"ci_width": None}})

    class Phone(IPhoneTarget):  # never reached: the plan refuses first (a launched round would fail loudly here)
        def run_round(self, request, should_stop):
            raise AssertionError("a round was launched")

    old = Phone("00008110-0000000000000009", name="lab9", api=object(), os_version="17", os_source="devices.yaml")
    with pytest.raises(InputError, match=r"^nothing can run: every chosen variant needs a newer OS than its device "
                                         r"\(fp32(\+kv)? needs iOS 18 \(Core ML spec 9, \w+\.mlpackage\), lab9 runs "
                                         r"iOS 17 \(per devices\.yaml\)\)"):
        start_run(config, Workspace(tmp_path), targets=[old], variants=variants)
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").iterdir())
