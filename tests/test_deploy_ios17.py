"""The iOS 17+ path: tunneld lookup (off the event loop), RSD handshake, DVT over dtservicehub, launch and kill.

Faked: the tunnel itself (tests/fake_iphone/rsd.py serves tunneld's HTTP listing and an RSD endpoint on plain
loopback TCP instead of a QUIC/TLS-PSK utun link) and the phone. Real: pymobiledevice3's RemoteXPC/HTTP2 client,
its RSD service discovery, DvtProvider over RSD, our deploy code.
"""

from __future__ import annotations

import pytest

from bench.deploy import api
from bench.deploy.errors import RunnerTimeout, TunnelUnavailable
from deploy_fixtures import add_phone, job_spec, make_inputs, make_variant, mux, tunneld  # noqa: F401


@pytest.fixture
def variants(tmp_path):
    return {"int8-abcd": make_variant(tmp_path / "variants", "int8-abcd", 4)}


def _ios17(mux, tunneld, index=1):
    phone = add_phone(mux, index, ios="17.5.1", build="21F90", product_type="iPhone15,2")
    return phone, tunneld.add(mux, phone)


def test_ios17_job_runs_through_the_tunnel(mux, tunneld, variants):
    phone, _tunnel = _ios17(mux, tunneld)
    health = api.health(phone.udid)
    assert health.tunnel is True and health.ready
    assert health.disk_image == "Personalized" and health.ddi_mounted is True
    report = api.deploy(phone.udid, job_spec(list(variants)), variants, make_inputs())
    result = api.run_job(phone.udid, report.job_id, 30, poll_s=0.05)
    assert result["status"] == "complete" and result["device"]["os_version"] == "17.5.1"
    assert phone.requests["service:com.apple.instruments.remoteserver.DVTSecureSocketProxy"] == 0  # not lockdown
    assert phone.launches[-1]["arguments"][:2] == ["--job", report.job_id]


def test_ios17_hung_runner_is_killed_through_the_tunnel(mux, tunneld, variants):
    phone, _tunnel = _ios17(mux, tunneld)
    phone.faults.runner_hang = True
    job_id = api.deploy_job(phone.udid, job_spec(list(variants)), variants, make_inputs())
    with pytest.raises(RunnerTimeout):
        api.run_job(phone.udid, job_id, 0.5, poll_s=0.05)
    assert phone.processes == {}


def test_tunneld_listing_a_dead_tunnel_is_a_clear_failure_not_an_index_error(mux, tunneld, variants):
    """pymobiledevice3's get_tunneld_device_by_udid raises IndexError here; we must say what to do instead."""
    phone, tunnel = _ios17(mux, tunneld)
    tunnel.alive = False
    job_id = api.deploy_job(phone.udid, job_spec(list(variants)), variants, make_inputs())
    assert api.health(phone.udid).tunnel is True  # listed …
    with pytest.raises(TunnelUnavailable, match="restart tunneld"):  # … but dead
        api.run_job(phone.udid, job_id, 5, poll_s=0.05)


def test_tunneld_running_without_this_phone(mux, tunneld, variants):
    phone = add_phone(mux, 2, ios="17.5.1", build="21F90")
    health = api.health(phone.udid)
    assert health.tunnel is False and any("lists no tunnel" in p for p in health.problems)
    with pytest.raises(TunnelUnavailable, match="lists no tunnel"):
        api.run_job(phone.udid, api.deploy_job(phone.udid, job_spec(list(variants)), variants, make_inputs()), 5)
