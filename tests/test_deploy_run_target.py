"""The run stage's iPhone target (bench/run/targets/iphone.py) driving the protocol-level fake iPhone through
bench.deploy.api: resolve → conditions (status job) → one round (deploy + run + validated result → step results).

Faked: the phone (tests/fake_iphone) and image preprocessing (zeros instead of the captioner's tensors, to keep
torch out of this test). Real: pymobiledevice3 over sockets, the deploy layer, the contract validation.
"""

from __future__ import annotations

import numpy as np

from deploy_fixtures import DECODE, add_phone, make_variant, mux  # noqa: F401


def test_iphone_target_runs_a_round_on_the_fake(mux, tmp_path):
    from bench.run.targets import resolve_targets
    from bench.run.targets.base import ImageItem, RoundRequest, Step, VariantRef
    from bench.run.targets.iphone import IPhoneTarget

    phone = add_phone(mux, 1)
    assert [t.udid for t in resolve_targets(["iphone"])] == [phone.udid]

    target = IPhoneTarget(phone.udid, poll_s=0.05,
                          preprocess=lambda images, size, mode, variant=None: np.zeros((1, 3, size, size), "f4"))
    conditions = target.conditions()
    assert (conditions.device_model, conditions.thermal_state) == ("iPhone14,2", "nominal")

    variant = VariantRef("int8-abcd", "int8", "hash", path=make_variant(tmp_path, "int8-abcd", 1), image_size=32,
                         decode=DECODE)
    steps = [Step("k-cpu", "s-cpu", variant, "cpuOnly", 0), Step("k-all", "s-all", variant, "all", 0)]
    request = RoundRequest(0, steps, [ImageItem("img-1", lambda: None)], warmup=1, repeats=3, compute_plan=False)
    results = {r.job_key: r for r in target.run_round(request, lambda: False)}
    assert set(results) == {"k-cpu", "k-all"}
    assert all(r.error is None and len(r.samples) == 3 and len(r.warmup) == 1 for r in results.values())
    assert any("step int8-abcd all" in line for line in target.log_lines)
