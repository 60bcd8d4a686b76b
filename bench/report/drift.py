"""Output drift of imported models: what each variant computes on each compute unit, against its family's reference
on `cpuOnly` on the same device — max abs error, relative L2, cosine similarity, top-1 agreement for class scores.

Read from the outputs a run stored (bench.run.generic: outputs/<job_key>/*.npy, hashed in the job record), over the
fixed seeded input set every variant of a family was fed. The family's reference was fixed when the run started
(run.json plan.imported). Drift against itself on cpuOnly is 0 by construction and is shown as the anchor row.
"""

from __future__ import annotations

from typing import Any

DRIFT_COLUMNS = ["variant", "family", "reference", "target", "unit", "output", "inputs", "max |Δ|", "rel. L2",
                 "cosine", "top-1 agree"]


def drift_rows(run) -> tuple[list[dict[str, Any]], list[str]]:
    """(one row per variant × target × compute unit × output, notes on what could not be compared)."""
    from bench.errors import DamagedError
    from bench.run.generic import drift, read_output

    imported = ((run.run.get("plan") or {}).get("imported")) or {}
    if not imported:
        return [], []
    stored: dict[tuple[str, str, str], dict[str, Any]] = {}
    notes = []
    for job in sorted(run.jobs, key=lambda j: (j.get("round", 0), j["job_key"])):
        outputs = job.get("outputs") or {}
        key = (job["variant_id"], (job.get("target") or {}).get("id"), job["compute_unit"])
        if outputs.get("error"):
            notes.append(f"outputs of {job['variant_id']} on {key[1]} {key[2]} not kept: {outputs['error']}")
        elif outputs.get("files") and key not in stored:
            stored[key] = {"job": job, "files": outputs["files"]}
    rows = []
    for (variant_id, target_id, unit), found in sorted(stored.items()):
        info = imported.get(variant_id) or {}
        reference = info.get("reference")
        anchor = stored.get((reference, target_id, "cpuOnly"))
        if anchor is None:
            notes.append(f"drift of {variant_id} on {target_id} {unit}: its family's reference {reference} was not "
                         "measured on cpuOnly there")
            continue
        try:
            rows += _compare(run, variant_id, info, reference, target_id, unit, found, anchor, drift, read_output)
        except DamagedError as err:
            notes.append(f"drift of {variant_id} on {target_id} {unit} not computed: {err}")
    return rows, notes


def _compare(run, variant_id, info, reference, target_id, unit, found, anchor, drift, read_output) -> list[dict]:
    mine = _by_output(found["files"])
    theirs = _by_output(anchor["files"])
    target = found["job"].get("target") or {}
    rows = []
    for output in sorted(set(mine) & set(theirs)):
        inputs = sorted(set(mine[output]) & set(theirs[output]))
        if not inputs:
            continue
        metrics = drift([read_output(run.run_dir, theirs[output][i]) for i in inputs],
                        [read_output(run.run_dir, mine[output][i]) for i in inputs])
        rows.append({"variant_id": variant_id, "variant": info.get("name") or variant_id,
                     "family": info.get("family"), "reference": reference, "target_id": target_id,
                     "target": target.get("model") or target.get("name") or target_id, "compute_unit": unit,
                     "output": output, **metrics})
    return rows


def _by_output(files: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    grouped: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in files:
        grouped.setdefault(entry["name"], {})[entry["input_id"]] = entry
    return grouped


def drift_cells(row: dict[str, Any]) -> list[str]:
    def number(value, digits=3, kind="g") -> str:
        return "-" if value is None else f"{value:.{digits}{kind}}"

    agree = row.get("top1_agreement")
    return [row["variant"], str(row.get("family")), str(row.get("reference")), str(row["target"]),
            row["compute_unit"], row["output"], str(row["n_inputs"]), number(row["max_abs"]), number(row["rel_l2"]),
            number(row["cosine"], 6, "f"), "-" if agree is None else f"{agree:.0%}"]
