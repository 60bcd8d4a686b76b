"""`bench explain A B`: whether and why variant A is slower (or faster) than B on one device and compute unit, from
data.

Three layers of evidence, most direct first:
1. measured: latency (median, CI of the shift, verdict; paired by image when the samples name their image) and load
   times (compile / cold / warm / first prediction);
2. static: the stored packages' difference (ops and decompression ops added, weight formats, bytes, duplicated tensors),
   from the variant manifests' `measured` analysis (never from the recipe);
3. compute plan (when the run recorded MLComputePlan): ops that moved off the Neural Engine or to another unit,
   supported units lost, and shares of Core ML's *estimated* cost that moved. A per-op time is the package's measured
   median time × the op's estimated cost share: an ESTIMATE, and labelled so everywhere.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from bench.errors import InputError, did_you_mean
from bench.report import verdicts as stats
from bench.report.facts import KIND_ORDER, UNIT_ORDER, load_ns, target_label, variant_name
from bench.report.load import RunData

ESTIMATE = "estimate"
NEURAL_ENGINE = "Neural Engine"


def unit_name(raw: Any) -> str:
    """Core ML device names as people read them (the runner may write neuralEngine / ane / NeuralEngine)."""
    text = str(raw or "").strip()
    low = text.lower().replace("_", "").replace(" ", "")
    if "neural" in low or low in ("ane", "ne"):
        return NEURAL_ENGINE
    if "gpu" in low:
        return "GPU"
    if "cpu" in low:
        return "CPU"
    return text or "unknown"


# ----------------------------------------------------------------------------------------------- resolution
def _variant_names(run: RunData) -> dict[str, str]:
    return {job["variant_id"]: variant_name(job["variant_id"], run.variants.get(job["variant_id"])) for job in run.jobs}


def resolve_variant(run: RunData, wanted: str) -> str:
    names = _variant_names(run)
    if wanted in names:
        return wanted
    matches = [vid for vid, name in names.items() if name == wanted]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InputError(f"variant name {wanted!r} is ambiguous in run {run.run_id}: {', '.join(sorted(matches))}")
    raise did_you_mean(f"variant in run {run.run_id}", wanted, sorted(set(names.values())))


def _jobs_for(run: RunData, variant_id: str) -> list[dict]:
    return [job for job in run.jobs if job["variant_id"] == variant_id]


def _target_matches(target: dict, device: str | None) -> bool:
    if device is None:
        return True
    return device in {str(target.get(k)) for k in ("id", "model", "name", "kind")}


def pick_jobs(run: RunData, a_id: str, b_id: str, device: str | None, compute_unit: str | None) -> tuple[dict, dict]:
    """The two jobs to compare: same target and compute unit; defaults prefer a phone and `all`."""
    pairs = []
    for job_a in _jobs_for(run, a_id):
        for job_b in _jobs_for(run, b_id):
            ta, tb = job_a.get("target") or {}, job_b.get("target") or {}
            if ta.get("id") != tb.get("id") or job_a["compute_unit"] != job_b["compute_unit"]:
                continue
            if not _target_matches(ta, device) or (compute_unit and job_a["compute_unit"] != compute_unit):
                continue
            pairs.append((KIND_ORDER.get(ta.get("kind"), 9), UNIT_ORDER.get(job_a["compute_unit"], 9), job_a, job_b))
    if not pairs:
        where = " ".join(x for x in (f"device {device}" if device else "", f"compute unit {compute_unit}"
                                     if compute_unit else "") if x) or "any common target and compute unit"
        raise InputError(f"run {run.run_id} has no measurements of both variants on {where}; "
                         "see `bench report` for what was measured")
    pairs.sort(key=lambda p: (p[0], p[1]))
    return pairs[0][2], pairs[0][3]


# ----------------------------------------------------------------------------------------------- measured
def _job_samples(run: RunData, job: dict):
    s = run.samples
    target = job.get("target") or {}
    mask = (~s["is_warmup"].astype(bool)) & (s["variant_id"] == job["variant_id"]) & \
           (s["target_id"] == target.get("id")) & (s["compute_unit"] == job["compute_unit"])
    return s.loc[mask]


def _image_ids(frame):
    if "image_id" not in frame.columns or frame["image_id"].isna().any():
        return None
    return frame["image_id"].astype(str).to_numpy()


def _median_ms(frame, column: str) -> float | None:
    values = frame[column].dropna()
    return float(values.median()) / 1e6 if len(values) else None


def _series(frame) -> dict[str, Any]:
    """A job's samples as the arrays bench.report.verdicts.latency_verdicts reads."""
    series = {"latency": frame["latency_ns"].to_numpy(dtype="float64"), "image": _image_ids(frame)}
    for name, column in (("encoder", "encoder_ns"), ("decoder", "decoder_ns"), ("steps", "decoder_steps"),
                         ("first_token", "first_token_ns")):
        if column in frame.columns and len(frame) and not frame[column].isna().any():
            series[name] = frame[column].to_numpy(dtype="float64")
    return series


def measured_difference(run: RunData, job_a: dict, job_b: dict, name_a: str, name_b: str) -> dict[str, Any]:
    sa, sb = _job_samples(run, job_a), _job_samples(run, job_b)
    # Paired by image where both sides say which image each sample decoded (decode length varies per image).
    verdict = stats.compare_latency_paired(sb["latency_ns"].to_numpy(), sa["latency_ns"].to_numpy(),
                                           _image_ids(sb), _image_ids(sa), key=f"{name_a} vs {name_b}",
                                           metric="latency median")
    # By part (tokens per caption, encoder, decoder per step, fixed-length caption), where the samples carry them.
    parts = [v.to_dict() for v in stats.latency_verdicts([_series(sb)], _series(sa), key=f"{name_a} vs {name_b}")[1:]]
    loads = []
    # Load figures are compared only when both jobs measured them the same way (the target labels its method).
    method_a, method_b = ((job.get("load") or {}).get("method") for job in (job_a, job_b))
    same_way = method_a == method_b
    note = "single measurement per job (no CI)" if same_way else \
        f"not compared: measured differently ({method_a or 'unlabelled'} vs {method_b or 'unlabelled'})"
    for field_name, label in (("compile", "compile"), ("cold_load", "cold load"), ("warm_load", "warm load"),
                              ("first_prediction", "first prediction")):
        a, b = load_ns(job_a, field_name), load_ns(job_b, field_name)
        loads.append({"what": label, "a_ms": a / 1e6 if a is not None else None, "b_ms": b / 1e6 if b is not None else None,
                      "delta_ms": (a - b) / 1e6 if a is not None and b is not None and same_way else None,
                      "note": note})
    packages = []
    for column, label in (("encoder_ns", "encoder"), ("decoder_ns", "decoder")):
        a, b = _median_ms(sa, column), _median_ms(sb, column)
        packages.append({"package": label, "a_ms": a, "b_ms": b,
                         "delta_ms": a - b if a is not None and b is not None else None})
    return {"latency": verdict.to_dict(), "parts": parts, "loads": loads, "packages": packages,
            "n_a": int(len(sa)), "n_b": int(len(sb))}


# ----------------------------------------------------------------------------------------------- static
def static_difference(manifest_a: dict | None, manifest_b: dict | None) -> dict[str, Any] | None:
    """What differs in the stored packages (from `measured`, never from the recipe)."""
    if not manifest_a or not manifest_b:
        return None
    ma, mb = manifest_a.get("measured") or {}, manifest_b.get("measured") or {}

    def count_delta(key: str) -> list[dict]:
        a, b = ma.get(key) or {}, mb.get(key) or {}
        return [{"op": op, "a": a.get(op, 0), "b": b.get(op, 0), "delta": a.get(op, 0) - b.get(op, 0)}
                for op in sorted(set(a) | set(b)) if a.get(op, 0) != b.get(op, 0)]

    tensors_a = {(t.get("package"), t.get("name")): t for t in ma.get("tensors") or []}
    tensors_b = {(t.get("package"), t.get("name")): t for t in mb.get("tensors") or []}
    formats = []
    for key in sorted(set(tensors_a) & set(tensors_b), key=str):
        ta, tb = tensors_a[key], tensors_b[key]
        if (ta.get("storage"), ta.get("bits"), ta.get("sparsity")) != (tb.get("storage"), tb.get("bits"), tb.get("sparsity")):
            formats.append({"package": key[0], "tensor": key[1], "b": _format(tb), "a": _format(ta),
                            "bytes_b": tb.get("bytes"), "bytes_a": ta.get("bytes")})
    storage_a = Counter(t.get("storage") for t in tensors_a.values())
    storage_b = Counter(t.get("storage") for t in tensors_b.values())
    return {
        "bytes": {k: {"a": ma.get(k), "b": mb.get(k)} for k in ("total_bytes", "weight_bytes")},
        "sparsity": {"a": ma.get("sparsity"), "b": mb.get("sparsity")},
        "bits_per_weight": {"a": ma.get("bits_per_weight"), "b": mb.get("bits_per_weight")},
        "op_counts": count_delta("op_counts"),
        "decompression_ops": count_delta("decompression_ops"),
        "weight_formats": {"a": dict(sorted(storage_a.items(), key=str)), "b": dict(sorted(storage_b.items(), key=str))},
        "tensors_changed": formats,
        "duplicated_tensors": {"a": ma.get("duplicated_tensors") or [], "b": mb.get("duplicated_tensors") or []},
    }


def _format(tensor: dict) -> str:
    sparsity = tensor.get("sparsity") or 0
    extra = f", {sparsity:.0%} zeros" if sparsity else ""
    return f"{tensor.get('storage')} {tensor.get('dtype')} ({tensor.get('bits')} bit{extra})"


# ----------------------------------------------------------------------------------------------- compute plan
def compute_plan_difference(plan_a: dict | None, plan_b: dict | None, package_ms_a: dict[str, float | None],
                            package_ms_b: dict[str, float | None]) -> dict[str, Any] | None:
    """Compare two MLComputePlans op by op (matched by package and op name). Times are estimates."""
    if not plan_a or not plan_b:
        return None
    # Only the packages' op lists: the runner's plan also carries `cost_kind: "estimate"` (docs/runner.md).
    # Constants have neither a device nor a cost in MLComputePlan: nothing runs, so they are left out.
    def placed(ops: list) -> list:
        return [op for op in ops if op.get("preferred") is not None or op.get("cost") is not None]

    plan_a = {package: placed(ops) for package, ops in plan_a.items() if isinstance(ops, list)}
    plan_b = {package: placed(ops) for package, ops in plan_b.items() if isinstance(ops, list)}

    def ops(plan: dict) -> dict[tuple[str, str], dict]:
        return {(package, str(op.get("name"))): op for package, items in plan.items() for op in items or []}

    a, b = ops(plan_a), ops(plan_b)

    def est(package: str, cost: float | None, times: dict) -> float | None:
        total = times.get(package)
        return total * cost if total is not None and cost is not None else None

    moved, lost = [], []
    for key in sorted(set(a) & set(b)):
        oa, ob = a[key], b[key]
        unit_a, unit_b = unit_name(oa.get("preferred")), unit_name(ob.get("preferred"))
        row = {"package": key[0], "op": key[1], "type": oa.get("type"), "b_unit": unit_b, "a_unit": unit_a,
               "b_cost": ob.get("cost"), "a_cost": oa.get("cost"),
               "b_est_ms": est(key[0], ob.get("cost"), package_ms_b), "a_est_ms": est(key[0], oa.get("cost"), package_ms_a)}
        if unit_a != unit_b:
            moved.append(row)
        gone = sorted({unit_name(u) for u in ob.get("supported") or []} - {unit_name(u) for u in oa.get("supported") or []})
        if gone:
            lost.append({**row, "units_lost": gone})
    added = defaultdict(lambda: {"count": 0, "cost": 0.0, "est_ms": 0.0, "units": Counter()})
    for key in sorted(set(a) - set(b)):
        op = a[key]
        group = added[str(op.get("type"))]
        group["count"] += 1
        group["cost"] += float(op.get("cost") or 0)
        group["est_ms"] += est(key[0], op.get("cost"), package_ms_a) or 0.0
        group["units"][unit_name(op.get("preferred"))] += 1
    removed = Counter(str(b[key].get("type")) for key in set(b) - set(a))
    shares = []
    for package in sorted(set(plan_a) | set(plan_b)):
        for unit in sorted({unit_name(op.get("preferred")) for op in (plan_a.get(package) or []) + (plan_b.get(package) or [])}):
            share_a = sum(float(op.get("cost") or 0) for op in plan_a.get(package) or [] if unit_name(op.get("preferred")) == unit)
            share_b = sum(float(op.get("cost") or 0) for op in plan_b.get(package) or [] if unit_name(op.get("preferred")) == unit)
            shares.append({"package": package, "unit": unit, "b_share": share_b, "a_share": share_a,
                           "b_est_ms": est(package, share_b, package_ms_b), "a_est_ms": est(package, share_a, package_ms_a)})
    off_ne = [m for m in moved if m["b_unit"] == NEURAL_ENGINE]
    destinations = Counter(m["a_unit"] for m in off_ne)
    total_a = sum(v for v in package_ms_a.values() if v is not None) or None
    return {
        "label": "per-op times are estimates: the package's measured median time × Core ML's estimated cost share",
        "moved": moved, "supported_lost": lost,
        "added": [{"type": t, "count": g["count"], "est_ms": g["est_ms"],
                   "time_share": g["est_ms"] / total_a if total_a else None,
                   "units": dict(g["units"])} for t, g in sorted(added.items())],
        "removed": dict(sorted(removed.items())),
        "unit_shares": shares,
        "off_neural_engine": {"count": len(off_ne), "to": dict(sorted(destinations.items())),
                              "b_cost_by_package": {p: sum(float(m["b_cost"] or 0) for m in off_ne if m["package"] == p)
                                                    for p in sorted({m["package"] for m in off_ne})},
                              "b_est_ms": sum(m["b_est_ms"] or 0.0 for m in off_ne),
                              "a_est_ms": sum(m["a_est_ms"] or 0.0 for m in off_ne)},
        "ops": {"a": len(a), "b": len(b)},
    }


def _refuse_damaged(run: RunData, variant_id: str) -> None:
    """bench.build.integrity on the variant's folder in this workspace, when it is there (packages may be pruned)."""
    directory = run.workspace.variants_dir / variant_id
    if directory.is_dir():
        from bench.build.integrity import check_variant

        check_variant(directory, packages_optional=True)


# ----------------------------------------------------------------------------------------------- the answer
def explain(run: RunData, a: str, b: str, *, device: str | None = None, compute_unit: str | None = None,
            check_variants: bool = True) -> dict[str, Any]:
    """Everything `bench explain` prints: measured deltas, static diff, compute-plan diff, and a short answer.

    `check_variants`: refuse a variant whose stored manifest or packages changed since its build (the static facts
    would describe other bytes); the report's sweep explains what the run stored and passes False.
    """
    a_id, b_id = resolve_variant(run, a), resolve_variant(run, b)
    if a_id == b_id:
        raise InputError(f"explain needs two different variants, got {a!r} twice")
    if check_variants:
        _refuse_damaged(run, a_id)
        _refuse_damaged(run, b_id)
    job_a, job_b = pick_jobs(run, a_id, b_id, device, compute_unit)
    names = _variant_names(run)
    name_a, name_b = names[a_id], names[b_id]
    measured = measured_difference(run, job_a, job_b, name_a, name_b)
    package_ms_a = {p["package"]: p["a_ms"] for p in measured["packages"]}
    package_ms_b = {p["package"]: p["b_ms"] for p in measured["packages"]}
    # From the manifests' `measured` analysis (bench.build's `models diff` compares the packages themselves; the
    # manifests carry the same facts and exist even when the packages were pruned from this machine).
    static = static_difference(run.variants.get(a_id), run.variants.get(b_id))
    plan = compute_plan_difference(job_a.get("compute_plan"), job_b.get("compute_plan"), package_ms_a, package_ms_b)
    target = job_a.get("target") or {}
    result = {
        "run_id": run.run_id, "a": {"name": name_a, "variant_id": a_id, "decoding": job_a.get("decoding")},
        "b": {"name": name_b, "variant_id": b_id, "decoding": job_b.get("decoding")},
        "target": target_label(target.get("kind"), target.get("model"), target.get("name")),
        "target_kind": target.get("kind"), "compute_unit": job_a["compute_unit"],
        "measured": measured, "static": static, "compute_plan": plan,
        "device_quality": device_quality_findings(run, (a_id, b_id), target.get("id"), job_a["compute_unit"]),
    }
    result["answer"] = summarize(result)
    result["drift"] = drift_findings(run, (a_id, b_id), target.get("id"), job_a["compute_unit"])
    result["answer"] += [drift_sentence(row) for row in result["drift"]]
    return result


def drift_findings(run: RunData, variant_ids: tuple[str, ...], target_id: str | None, unit: str) -> list[dict]:
    """Imported models: each output's drift (bench.report.drift) of these variants on this target and unit."""
    if not ((run.run.get("plan") or {}).get("imported")):
        return []
    from bench.report.drift import drift_rows

    rows, _ = drift_rows(run)
    return [row for row in rows if row["variant_id"] in variant_ids and row["target_id"] == target_id
            and row["compute_unit"] == unit]


def drift_sentence(row: dict[str, Any]) -> str:
    """One measured drift, with its numbers: never a judgement the numbers do not carry."""
    reference = row["reference"].rsplit("-", 1)[0] if row["reference"] else "its reference"
    agree = "" if row.get("top1_agreement") is None else f", top-1 agreement {row['top1_agreement']:.0%}"
    rel = "n/a" if row.get("rel_l2") is None else f"{row['rel_l2']:.2%}"
    cosine = "n/a" if row.get("cosine") is None else f"{row['cosine']:.6f}"
    return (f"On {row['compute_unit']}, {row['variant']}'s output {row['output']!r} differs from {reference} on cpuOnly "
            f"by {rel} (relative L2 over {row['n_inputs']} seeded inputs; max |Δ| {row['max_abs']:.3g}, cosine "
            f"{cosine}{agree}).")


CAUSE_SHARE = 0.5  # a cause is named only when the changes it names account for at least half the measured delta


def summarize(result: dict[str, Any]) -> list[str]:
    """The answer: every sentence built from one finding above, with its numbers (see _latency_sentence for the
    words each verdict allows); a cause only when the compute plan accounts for a stated share of the delta."""
    on_host = result["target_kind"] == "host-torch"
    lines = [_latency_sentence(result)]
    if on_host:
        lines.append("These are host-torch numbers: host emulation (not Core ML) — dense PyTorch weights on the host "
                     "CPU; they say nothing about a phone.")
    lines += _part_sentences(result)
    lines += _decoding_sentences(result, on_host=on_host)
    lines += _size_sentences(result["static"], phone_note=on_host)
    if not on_host:
        lines += _plan_sentences(result)
    lines.append(_cause_sentence(result))
    lines += [finding["sentence"] for finding in result.get("device_quality") or []]
    return [line for line in lines if line]


def device_quality_findings(run: RunData, variant_ids: tuple[str, ...], target_id: str | None,
                            compute_unit: str) -> list[dict[str, Any]]:
    """What the device decoded for each variant on this target and unit, against the host reference
    (bench.report.device_quality): changed captions and the BLEU delta with its CI and outcome."""
    from bench.report import device_quality

    def wanted(record: dict) -> bool:
        return (record["variant_id"] in variant_ids and record["target"]["id"] == target_id
                and record["compute_unit"] == compute_unit)

    found = sorted(device_quality.rows(run, only=wanted), key=lambda row: variant_ids.index(row["variant_id"]))
    return [{"variant": row["variant"], "changed": row["changed"], "changed_share": row["changed_share"],
             "n_images": row["n_images"], "bleu_delta": (row["delta"] or {}).get("bleu"), "sentence": device_quality.sentence(row)}
            for row in found]


def _latency_sentence(result: dict[str, Any]) -> str:
    """faster / slower only after DIFFERENT, "no measurable difference" after SAME, "undecided" after UNKNOWN."""
    name_a, name_b = result["a"]["name"], result["b"]["name"]
    lat = result["measured"]["latency"]
    where = f"on {result['target']} / {result['compute_unit']}"
    if lat.get("relative") is None:
        return f"Undecided: {name_a} vs {name_b} {where} — {lat['detail']} (UNKNOWN)."
    lo, hi = lat["ci95"]
    numbers = (f"median {lat['current']:.1f} ms vs {lat['baseline']:.1f} ms, shift {lat['relative']:+.1%}, "
               f"95% CI {lo:+.1%} … {hi:+.1%}")
    if lat["outcome"] == stats.DIFFERENT:
        word = "slower" if lat["relative"] > 0 else "faster"
        return (f"{name_a} is {abs(lat['relative']):.1%} {word} than {name_b} {where}: {numbers} — DIFFERENT "
                f"({lat['detail']}).")
    if lat["outcome"] == stats.SAME:
        return (f"No measurable difference between {name_a} and {name_b} {where}: {numbers}, inside "
                f"±{lat['extra']['min_effect']:.0%} — SAME.")
    return f"Undecided whether {name_a} differs from {name_b} {where}: {numbers} — UNKNOWN ({lat['detail']})."


def _part_sentences(result: dict[str, Any]) -> list[str]:
    parts = {p["metric"]: p for p in result["measured"].get("parts") or []}
    lines = []
    tokens = parts.get("tokens per caption")
    if tokens and tokens["outcome"] == stats.DIFFERENT:
        lines.append(f"Token counts differ — {tokens['detail']}: whole-caption times are not like for like; the "
                     "latency of a caption of fixed length is the fair comparison.")
    described = []
    for metric, label in (("latency: encoder", "encoder"), ("latency: time to first token", "time to first token"),
                          ("latency: decoder per step", "decoder per step"),
                          ("latency at fixed length", "caption of fixed length")):
        part = parts.get(metric)
        if part and part.get("relative") is not None:
            word = {stats.DIFFERENT: "slower" if part["relative"] > 0 else "faster", stats.SAME: "no measurable "
                    "difference"}.get(part["outcome"], "undecided")
            described.append(f"{label} {part['current']:.2f} vs {part['baseline']:.2f} ms ({part['relative']:+.1%}, "
                             f"{word})")
    if described:
        lines.append("By part (medians): " + "; ".join(described) + ".")
    return lines


def _decoding_sentences(result: dict[str, Any], *, on_host: bool) -> list[str]:
    """When the two jobs decoded differently (recorded per job, issue 14), say how: it changes what a step is.
    host-torch emulates the cache in PyTorch: no Core ML state was measured there."""
    a, b = result["a"], result["b"]
    if (a.get("decoding") or "recompute") == (b.get("decoding") or "recompute"):
        return []
    where = "a float16 PyTorch buffer (host emulation of the Core ML state)" if on_host else "Core ML state"
    how = {"kv_cache": f"keeps the self-attention cache in {where} (one token per decoder step, the image's "
                       "cross-attention keys/values computed once by the encoder)",
           "recompute": "recomputes every position at each decoder step"}
    return [f"The decoders differ: {a['name']} {how.get(a.get('decoding') or 'recompute', a.get('decoding'))}; "
            f"{b['name']} {how.get(b.get('decoding') or 'recompute', b.get('decoding'))}. Compare time to first "
            "token and decoder per step."]


def _size_sentences(static: dict | None, *, phone_note: bool) -> list[str]:
    """Size only when the sizes differ; stored decompression ops as what the package holds (on host-torch: what
    would matter on a phone, not measured here)."""
    if not static:
        return []
    prefix = "On a phone (not measured here) this would matter: " if phone_note else "Static: "
    lines = []
    added = [d for d in static["decompression_ops"] if d["delta"] > 0]
    if added:
        lines.append(f"{prefix}the stored package adds " + ", ".join(f"{d['delta']} {d['op']}" for d in added)
                     + f" op(s) (weights: {_formats_line(static['weight_formats']['a'])} vs "
                       f"{_formats_line(static['weight_formats']['b'])}).")
    bytes_a, bytes_b = static["bytes"]["total_bytes"]["a"], static["bytes"]["total_bytes"]["b"]
    if bytes_a and bytes_b and bytes_a != bytes_b:
        lines.append(f"Size on disk {bytes_a / 1e6:.1f} MB vs {bytes_b / 1e6:.1f} MB ({bytes_a / bytes_b - 1:+.1%}).")
    return lines


def _plan_sentences(result: dict[str, Any]) -> list[str]:
    name_a, name_b = result["a"]["name"], result["b"]["name"]
    plan = result["compute_plan"]
    if not plan:
        if result["target_kind"] == "iphone":
            return ["No compute plan recorded for this pair (run with compute_plan on iOS 17.4+ to see per-op units)."]
        return []
    lines = []
    off = plan["off_neural_engine"]
    if off["count"]:
        to = ", ".join(f"{n} to {u}" for u, n in off["to"].items())
        shares = ", ".join(f"{share:.0%} of the {package}" for package, share in off["b_cost_by_package"].items())
        lines.append(f"Compute plan: {off['count']} op(s) left the Neural Engine ({to}); in {name_b} they carried "
                     f"{shares} estimated cost; ≈{off['b_est_ms']:.1f} ms there vs ≈{off['a_est_ms']:.1f} ms now "
                     f"({ESTIMATE}).")
    lost = plan["supported_lost"]
    if lost:
        lines.append(f"{len(lost)} op(s) lost support for " + ", ".join(sorted({u for r in lost for u in r["units_lost"]}))
                     + f" in {name_a}.")
    for group in plan["added"]:
        lines.append(f"{group['count']} {group['type']} op(s) appear in {name_a} (preferred unit: "
                     + ", ".join(f"{u} {n}" for u, n in group["units"].items())
                     + f"), ≈{group['est_ms']:.1f} ms, {group['time_share'] or 0:.0%} of {name_a}'s time ({ESTIMATE}).")
    for share in plan["unit_shares"]:
        if share["unit"] == NEURAL_ENGINE and share["b_share"] != share["a_share"]:
            lines.append(f"{share['package']}: Neural Engine share of estimated cost {share['b_share']:.0%} → "
                         f"{share['a_share']:.0%} ({ESTIMATE}).")
    return lines


def plan_accounted_ms(plan: dict | None) -> float | None:
    """Per caption, the estimated time of what the compute plan says changed: ops that moved to another unit (their
    estimate now minus before) plus the ops only in A. None without a plan."""
    if not plan:
        return None
    moved = sum((m["a_est_ms"] or 0.0) - (m["b_est_ms"] or 0.0) for m in plan["moved"])
    return moved + sum(group["est_ms"] for group in plan["added"])


def _cause_sentence(result: dict[str, Any]) -> str | None:
    """A cause only after DIFFERENT and only when the compute plan's changes account for ≥ CAUSE_SHARE of the
    measured delta (same direction); on host-torch no Core ML cause at all."""
    lat = result["measured"]["latency"]
    if lat.get("outcome") != stats.DIFFERENT:
        return None
    delta = (lat["current"] or 0.0) - (lat["baseline"] or 0.0)
    if result["target_kind"] == "host-torch":
        return ("No cause found in the recorded data: host-torch runs dense PyTorch weights, so no Core ML cause "
                "(decompression, placement) applies to this measurement.")
    accounted = plan_accounted_ms(result["compute_plan"])
    if accounted is None:
        return ("No cause found in the recorded data: without a compute plan nothing apportions the measured "
                f"{delta:+.1f} ms per caption to the stored differences.")
    share = accounted / delta if delta else 0.0
    named = _named_changes(result["compute_plan"])
    if share >= CAUSE_SHARE:
        return (f"Cause: {named} account for ≈{accounted:+.1f} ms per caption ({ESTIMATE}), {share:.0%} of the "
                f"measured {delta:+.1f} ms.")
    return (f"No cause found in the recorded data: {named} account for ≈{accounted:+.1f} ms per caption "
            f"({ESTIMATE}), {share:.0%} of the measured {delta:+.1f} ms — under the {CAUSE_SHARE:.0%} needed to name "
            "them the cause.")


def _named_changes(plan: dict) -> str:
    moved, added = len(plan["moved"]), sum(group["count"] for group in plan["added"])
    words = []
    if moved:
        words.append(f"the {moved} op(s) that changed compute unit")
    if added:
        words.append(f"the {added} added " + ", ".join(group["type"] for group in plan["added"]) + " op(s)")
    return " and ".join(words) or "the compute-plan changes (none)"


def _formats_line(formats: dict) -> str:
    return ", ".join(f"{n} {k}" for k, n in formats.items()) or "none"


def sweep_explanations(run: RunData, table) -> list[dict[str, Any]]:
    """Explain every pruned variant against its dense twin (same captioner, precision, input size and resize mode)
    where both were measured."""
    explanations = []
    rows = [r for _, r in table.iterrows()]
    for row in rows:
        if not row["target_sparsity"] or row["emulated"]:
            continue
        twins = [r for r in rows if not r["target_sparsity"] and r["precision"] == row["precision"]
                 and (r["image_size"], r["resize"], r["model"]) == (row["image_size"], row["resize"], row["model"])
                 and r["target_id"] == row["target_id"]
                 and r["compute_unit"] == row["compute_unit"] and r.get("decoding") == row.get("decoding")]
        if twins:
            explanations.append(explain(run, row["variant_id"], twins[0]["variant_id"], device=row["target_id"],
                                        compute_unit=row["compute_unit"], check_variants=False))
    return explanations
