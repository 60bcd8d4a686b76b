"""devices.yaml validation, the `bench devices` overview and the usbmuxd address rules.

The overview runs the real pymobiledevice3 client against the protocol-level fake usbmuxd (tests/fake_iphone/);
"no usbmuxd" is a real missing socket.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.deploy import api
from bench.deploy.hashing import tree_sha256
from bench.deploy.inventory import load_inventory
from bench.errors import InputError
from deploy_fixtures import add_phone, make_variant, mux  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
GOOD = """devices:
  - name: lab1
    udid: 00008110-0000000000000001
    model: iPhone14,2
    ios: 16
    tags: [nightly]
  - name: lab9
    udid: 00008110-0000000000000009
    model: iPhone15,2
    ios: "17.5"
    enabled: false
"""


def test_shipped_example_inventory_is_valid_and_disabled():
    inventory = load_inventory(ROOT / "devices.yaml")
    assert inventory.devices and all(not d.enabled for d in inventory.devices)
    assert inventory.select(tag="nightly") == []  # placeholders never make a nightly run wait for phones


def test_inventory_loads_and_selects(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text(GOOD)
    inventory = load_inventory(path)
    assert inventory.devices[0].ios == "16"
    assert [d.name for d in inventory.select(tag="nightly")] == ["lab1"]
    assert inventory.by_name("lab9").mismatch("iPhone15,2", "17.5.1") is None
    assert "inventory says 17.5" in inventory.by_name("lab9").mismatch("iPhone15,2", "18.0")
    assert load_inventory(tmp_path / "absent.yaml").devices == []


@pytest.mark.parametrize("old, new, line, reason", [
    ("udid: 00008110-0000000000000009", "udid: not-a-udid", 8, "devices.1.udid: not a UDID"),
    ("model: iPhone15,2", "model: iPhone 14 Pro", 9, "expected a ProductType"),
    ("ios: \"17.5\"", "ios: seventeen", 10, "expected an iOS version"),
    ("ios: \"17.5\"", "ios: 16.10", 10, 'write the version in quotes (ios: "16.1")'),
    ("enabled: false", "enabeld: false", 11, "devices.1.enabeld: unknown key"),
    ("name: lab9", "name: lab1", 1, "two devices share the name 'lab1'"),
])
def test_inventory_errors_name_file_and_line(tmp_path, old, new, line, reason):
    path = tmp_path / "devices.yaml"
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(InputError) as caught:
        load_inventory(path)
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert reason in str(caught.value)


@pytest.fixture
def wide(monkeypatch):
    from bench.cli._common import console

    monkeypatch.setattr(console(), "width", 220)


def test_survey_shows_unknown_attached_and_missing_inventory_devices(mux, tmp_path, wide):
    path = tmp_path / "devices.yaml"
    path.write_text(GOOD + "  - name: lab8\n    udid: 00008110-0000000000000008\n    model: iPhone15,2\n    ios: \"17.5\"\n")
    known = add_phone(mux, 1)
    stranger = add_phone(mux, 5, installed=False)
    result = api.survey(load_inventory(path))
    states = {row.info.udid: row.state for row in result.rows}
    # lab8 is enabled and absent (a problem); lab9 is switched off in devices.yaml, so its absence is not.
    assert states == {known.udid: "ready", "00008110-0000000000000008": "missing",
                      "00008110-0000000000000009": "disabled", stranger.udid: "unknown"}
    assert result.usbmux_problem is None
    row = next(r for r in result.rows if r.info.udid == known.udid)
    assert row.info.name == "lab1" and row.health.runner.version == "0.3" and row.health.ddi_mounted

    output = CliRunner().invoke(_app(), ["devices", "--inventory", str(path)], terminal_width=200).output
    assert "lab1" in output and "missing" in output and "unknown" in output and "not installed" in output


def test_bench_devices_without_usbmuxd_prints_one_line_and_an_empty_table(monkeypatch, tmp_path, wide):
    monkeypatch.setenv("USBMUXD_SOCKET_ADDRESS", str(tmp_path / "no.sock"))
    result = CliRunner().invoke(_app(), ["devices", "--inventory", str(tmp_path / "none.yaml")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"no usbmuxd at {tmp_path / 'no.sock'}" in result.output
    assert "Traceback" not in result.output and "iPhones" in result.output


def test_cli_install_list_and_prune(mux, tmp_path, wide):
    from deploy_fixtures import make_runner_app

    phone = add_phone(mux, 1, installed=False)
    app = make_runner_app(tmp_path)
    result = CliRunner().invoke(_app(), ["devices", "install", str(app)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "org.bench.runner 0.4 (13)" in result.output and phone.apps["org.bench.runner"].version == "0.4"
    listing = CliRunner().invoke(_app(), ["devices", "ls-models", "--device", phone.udid], terminal_width=200)
    assert "0 model packages" in listing.output
    pruned = CliRunner().invoke(_app(), ["devices", "prune"], terminal_width=200)
    assert "removed 0 item(s)" in pruned.output
    status = CliRunner().invoke(_app(), ["devices", "status", "--timeout", "60"], terminal_width=200)
    assert "thermal nominal" in status.output and "31.2 °C" in status.output, status.output


def test_prune_keeps_packages_of_local_variants_by_default(mux, tmp_path, wide, monkeypatch):
    import json

    from bench.deploy.hashing import tree_sha256
    from deploy_fixtures import job_spec, make_inputs

    phone = add_phone(mux, 1)
    variants = {v: make_variant(tmp_path / "models" / "variants", v, seed) for seed, v in enumerate(["a-1", "b-2"])}
    api.deploy(phone.udid, job_spec(list(variants)), variants, make_inputs())
    local = variants["a-1"]
    packages = {r: {"sha256": tree_sha256(local / f"{r}.mlpackage")} for r in ("encoder", "decoder")}
    (local / "manifest.json").write_text(json.dumps({"packages": packages}))
    monkeypatch.setenv("BENCH_ROOT", str(tmp_path))
    result = CliRunner().invoke(_app(), ["devices", "prune", "--keep-jobs"], terminal_width=200)
    assert "removed 4 item(s)" in result.output, result.output  # b-2's two packages and the two inputs
    assert set(api.held(phone.udid).models) == {p["sha256"] for p in packages.values()}


def test_tree_hash_changes_with_content_and_names_not_timestamps(tmp_path):
    variant = make_variant(tmp_path, "v", seed=1)
    package = variant / "encoder.mlpackage"
    before = tree_sha256(package)
    (package / "Manifest.json").touch()
    assert tree_sha256(package) == before
    (package / "Manifest.json").write_text('{"fileFormatVersion": "1.0.1"}')
    assert tree_sha256(package) != before


def _app():
    from bench.cli import app

    return app
