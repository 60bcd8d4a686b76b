"""The run stage: measure variants × targets × compute units × images, carefully and durably.

    config.py     run.yaml / flags → RunConfig (pydantic; file:line errors)
    plan.py       series (variant × target × compute unit), job keys, the seeded interleaved order of each round
    targets/      one Target interface: iphone (deploy API), macos-coreml (Mac only), host-torch (emulation)
    stats.py      order-statistic CI of the median, the adaptive stopping rule
    scheduler.py  workers per device, thermal gate, retries/backoff, quarantine, records written as jobs arrive
    manifest.py   run.json, the only mutable file of a run
    api.py        start_run / resume_run / run_pipeline (the CLI's entry points)
    progress.py   the rich live view and the end-of-run summary

Records and tables live in bench/store (runs.py, history.py, compare.py). Nothing heavy is imported here.
"""
