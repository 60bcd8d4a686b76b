"""Evaluate caption quality of a subject on a dataset and write the `bench.eval` record (contracts §4).

Library API:  evaluate(captioner, dataset, options, subject=...) -> EvalRecord
A subject is anything providing a Captioner: a torch checkpoint directory (bench.train.load_captioner) or a
built variant, whose stored Core ML weights are decompressed into torch by
bench.build.torch_weights.captioner_from_variant — so quality describes exactly the deployed bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.errors import BenchError, IncomparableError, InputError, RecordError, check_seed, did_you_mean
from bench.eval.decode import (CaptionerLike, DecodeOptions, decode_images, default_image_size, default_resize,
                               resolve_max_length)
from bench.eval.metrics import DEFAULT_RESAMPLES, METRICS, check_corpus, paired_bootstrap_scores, score_corpus
from bench.eval.records import (
    DatasetInfo,
    Decoding,
    EvalRecord,
    Metrics,
    PerImage,
    Subject,
    Timing,
    parse_record,
    read_record,
    record_path,
    safe_name,
    write_record,
)
from bench.paths import Workspace


@dataclass(frozen=True)
class EvalOptions:
    """Decoding settings plus how the statistics are drawn. `threads` None leaves torch's default."""

    beams: int = 1
    batch_size: int = 16
    image_size: int | None = None
    resize: str | None = None  # None: the subject's own (a variant's recipe), else resize
    max_length: int | None = None
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    threads: int | None = None

    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(
            beams=self.beams, batch_size=self.batch_size, image_size=self.image_size,
            resize=self.resize, max_length=self.max_length,
        ).validate()

    def validate(self) -> "EvalOptions":
        self.decode_options()
        if self.resamples < 100:
            raise InputError(f"bootstrap needs at least 100 resamples for a 95 % interval, got {self.resamples}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be at least 1, got {self.threads}")
        check_seed(self.seed)
        return self


# --------------------------------------------------------------------------------------------- subjects


def checkpoint_subject(captioner: CaptionerLike, path: Path | str | None = None) -> Subject:
    sha = str(captioner.weights_sha256 or "")
    # The weights hash is part of the id: a retrained checkpoint in the same folder is a different subject.
    return Subject(
        kind="checkpoint",
        id=safe_name(f"{captioner.name}-{sha[:12]}" if sha else str(captioner.name)),
        weights_sha256=sha or None,
        path=str(path) if path is not None else None,
    )


def variant_subject(manifest: Any, path: Path | str | None = None) -> Subject:
    """A built variant: its id and content hash (the weights are the variant's stored bytes, not a checkpoint's)."""
    variant_id = str(manifest.variant_id)
    return Subject(
        kind="variant",
        id=variant_id,
        variant_hash=str(getattr(manifest, "variant_hash", None) or variant_id.rsplit("-", 1)[-1]),
        path=str(path) if path is not None else None,
    )


def open_subject(
    argument: str, workspace: Workspace | None = None, *, compute_unit: str | None = None
) -> tuple[CaptionerLike, Subject]:
    """Resolve a CLI argument: a checkpoint directory, or a variant (directory with manifest.json, id, id prefix
    or matrix name — resolved by bench.build.variants).

    With `compute_unit`, a variant is captioned by Core ML itself on that compute unit (macOS only; elsewhere a
    PlatformUnavailable error says so before anything is loaded)."""
    workspace = workspace or Workspace.current()
    if compute_unit is not None:
        return _open_coreml_variant(argument, workspace, compute_unit)
    path = Path(argument)
    if (path / "manifest.json").is_file():
        return _open_variant(argument, workspace)
    if path.is_dir():
        from bench.train.captioner import load_captioner

        captioner = load_captioner(path)
        return captioner, checkpoint_subject(captioner, path.resolve())
    if path.exists():
        raise InputError(f"{argument}: not a checkpoint directory (config.json, model.safetensors, tokenizer files)")
    if "/" in argument or argument.startswith("."):
        raise InputError(f"{argument}: no such checkpoint directory")
    try:
        return _open_variant(argument, workspace)
    except InputError as err:
        if not err.detail.startswith("unknown variant"):
            raise  # the variant exists and is what failed (e.g. a damaged package): that is the cause to name
        raise InputError(f"{argument}: no such checkpoint directory, and {err.detail}") from None


def _open_variant(argument: str, workspace: Workspace) -> tuple[CaptionerLike, Subject]:
    # Imported here: variant support lives in bench.build (another stage) and pulls coremltools.
    try:
        from bench.build.torch_weights import captioner_from_variant
        from bench.build.variants import load_variant, variant_dir
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("bench.build"):
            raise BenchError(
                f"{argument}: evaluating a variant needs {err.name}, which this bench does not have; "
                "evaluate a checkpoint directory instead"
            ) from None
        raise
    manifest = load_variant(argument, workspace)
    _refuse_damaged(manifest)
    captioner = captioner_from_variant(manifest, workspace)
    return captioner, variant_subject(manifest, variant_dir(manifest, workspace).resolve())


def _refuse_damaged(manifest) -> None:
    """Stored bytes that changed since the build are never evaluated (DamagedError names the file)."""
    from bench.build.integrity import check_variant

    check_variant(manifest)


def _open_coreml_variant(argument: str, workspace: Workspace, compute_unit: str) -> tuple[CaptionerLike, Subject]:
    from bench.build.coreml_predict import check_compute_unit, coreml_captioner_for_eval, require_macos
    from bench.build.variants import load_variant, variant_dir

    check_compute_unit(compute_unit)  # a typo is named as such, on any platform
    require_macos()  # fail before loading anything on Linux
    manifest = load_variant(argument, workspace)
    _refuse_damaged(manifest)
    captioner = coreml_captioner_for_eval(manifest, compute_unit, workspace)
    subject = variant_subject(manifest, variant_dir(manifest, workspace).resolve())
    # A Core ML evaluation is another measurement than the torch one: its own id, so records never collide.
    subject = subject.model_copy(update={"id": f"{subject.id}@coreml-{compute_unit}", "backend": "coreml",
                                         "compute_unit": compute_unit})
    return captioner, subject


# --------------------------------------------------------------------------------------------- evaluation


def _dataset_info(dataset: Sequence[Any]) -> DatasetInfo:
    if len(dataset) == 0:
        raise InputError(f"dataset {getattr(dataset, 'signature', '')!r} is empty: nothing to evaluate")
    return DatasetInfo(
        spec=str(getattr(dataset, "spec", getattr(dataset, "name", "unknown"))),
        signature=str(getattr(dataset, "signature", getattr(dataset, "name", "unknown"))),
        n=len(dataset),
    )


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    """Use `threads` torch threads for the evaluation only (a library call must not change the caller's)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def evaluate(
    captioner: CaptionerLike,
    dataset: Sequence[Any],
    options: EvalOptions = EvalOptions(),
    *,
    subject: Subject | None = None,
    evals_dir: Path | None = None,
    overwrite: bool = False,
) -> EvalRecord:
    """Caption every image, score against its references, and (when `evals_dir` is given) write the record.

    `dataset` is a CaptionDataset (contracts §2) or any sized sequence of samples with `image_id`,
    `captions` and `load_image()`.
    """
    options = options.validate()
    info = _dataset_info(dataset)
    subject = subject or checkpoint_subject(captioner)
    samples = list(dataset)
    references = [list(sample.captions) for sample in samples]
    check_corpus([""] * len(samples), references)  # an image without references: stop before decoding
    decoding = planned_decoding(captioner, options)
    if evals_dir is not None:
        existing = record_path(evals_dir, subject.id, info.signature, decoding)
        if existing.exists() and not overwrite:
            # Checked before the (long) decoding so that a repeated command fails at once.
            raise RecordError(f"{existing}: this evaluation already exists (records are immutable); pass --overwrite to redo it")

    decode_options = replace(options.decode_options(), image_size=decoding.image_size, resize=decoding.resize,
                             max_length=decoding.max_length)
    with _torch_threads(options.threads) as threads:
        run = decode_images(captioner, lambda i: samples[i].load_image(), decode_options, count=len(samples))
    captions = [out.caption for out in run.outputs]
    scores = score_corpus(captions, references, resamples=options.resamples, seed=options.seed)

    record = EvalRecord(
        subject=subject,
        dataset=info,
        decoding=decoding,
        metrics=Metrics.model_validate(scores.as_record()),
        per_image=[
            PerImage(
                image_id=str(sample.image_id), caption=out.caption, tokens=out.tokens, n_tokens=len(out.tokens),
                references=refs, cider=cider,
            )
            for sample, out, refs, cider in zip(samples, run.outputs, references, scores.cider_per_image)
        ],
        timing=Timing(
            seconds=run.seconds,
            images_per_second=len(samples) / run.seconds if run.seconds > 0 else 0.0,
            preprocess_seconds=run.preprocess_seconds,
            generate_seconds=run.generate_seconds,
            torch_threads=threads,
        ),
        environment=_environment(),
    )
    if evals_dir is not None:
        record = write_record(evals_dir, record, overwrite=overwrite)
    return record


def planned_decoding(captioner: CaptionerLike, options: EvalOptions) -> Decoding:
    """The decoding settings as they will be recorded (defaults resolved from the captioner)."""
    decode_options = options.decode_options()
    return Decoding(
        strategy=decode_options.strategy,  # type: ignore[arg-type]
        beams=options.beams,
        max_length=resolve_max_length(captioner, decode_options),
        batch_size=options.batch_size,
        image_size=options.image_size or default_image_size(captioner),
        resize=options.resize or default_resize(captioner),  # type: ignore[arg-type]
    )


def _environment() -> dict[str, Any]:
    from bench.store.environment import host_environment

    environment = host_environment()
    environment["packages"] = {**environment.get("packages", {}), **_extra_versions()}
    return environment


def _extra_versions() -> dict[str, str | None]:
    from bench.store.environment import package_versions

    return package_versions(("pycocoevalcap", "scipy"))


# --------------------------------------------------------------------------------------------- comparison


def _as_record(item: EvalRecord | dict | str | Path) -> EvalRecord:
    if isinstance(item, EvalRecord):
        return item
    if isinstance(item, dict):
        return parse_record(item)
    return read_record(item)


def paired_bootstrap(
    a_record: EvalRecord | dict | str | Path,
    b_record: EvalRecord | dict | str | Path,
    metric: str = "bleu",
    n: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap of b (the variant) against a (the baseline) on the same images: {delta, ci95, p_value, …}.

    delta = score(b) − score(a): negative means the variant captions worse. Records of different image sets,
    references or decoding are refused (IncomparableError), never silently compared.
    """
    if metric not in METRICS:
        raise did_you_mean("metric", metric, METRICS)
    check_seed(seed)
    if n < 1:
        raise InputError(f"resamples must be at least 1, got {n}")
    a, b = _as_record(a_record), _as_record(b_record)
    _check_comparable(a, b)
    result = paired_bootstrap_scores(a.captions, b.captions, a.references, metric, n=n, seed=seed)
    return {
        **result.as_dict(),
        "baseline_subject": a.subject.id,
        "variant_subject": b.subject.id,
        "dataset": a.dataset.signature,
    }


def _check_comparable(a: EvalRecord, b: EvalRecord) -> None:
    if a.dataset.signature != b.dataset.signature:
        raise IncomparableError(f"different datasets: {a.dataset.signature!r} vs {b.dataset.signature!r}")
    if a.image_ids != b.image_ids or a.references != b.references:
        raise IncomparableError(f"same dataset signature {a.dataset.signature!r} but different images or references")
    if a.decoding.model_dump(exclude={"batch_size"}) != b.decoding.model_dump(exclude={"batch_size"}):
        differing = sorted(k for k, v in a.decoding.model_dump().items() if getattr(b.decoding, k) != v and k != "batch_size")
        raise IncomparableError(f"decoded differently ({', '.join(differing)}): compare evaluations with the same settings")
    if a.metrics.bleu.signature != b.metrics.bleu.signature:
        raise IncomparableError(f"BLEU signatures differ: {a.metrics.bleu.signature} vs {b.metrics.bleu.signature}")
