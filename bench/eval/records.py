"""The eval record (kind `bench.eval` v1, docs/contracts.md §4): its typed shape, where it lives, how it is read.

`results/evals/<subject id>/<key>.json` where `<key>` is a 12-hex hash of the dataset signature *and* the
decoding settings: the same model on the same images decoded differently (beams, size, crop) is a different
measurement and gets its own immutable file instead of overwriting the other.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.errors import RecordError
from bench.store import records as store

KIND = "bench.eval"
VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Subject(_Frozen):
    """What was evaluated: a torch checkpoint, or a variant whose stored weights were decompressed into torch."""

    kind: Literal["checkpoint", "variant"]
    id: str
    weights_sha256: str | None = None
    variant_hash: str | None = None
    path: str | None = None
    # Which runtime produced the captions: the deployed weights in PyTorch (Linux and Mac), or Core ML itself (Mac).
    backend: Literal["torch", "coreml"] = "torch"
    compute_unit: str | None = None


class DatasetInfo(_Frozen):
    spec: str
    signature: str
    n: int


class Decoding(_Frozen):
    strategy: Literal["greedy", "beam"]
    beams: int
    max_length: int
    batch_size: int
    image_size: int
    resize: Literal["resize", "center_crop"]


class BleuMetric(_Frozen):
    score: float
    score_01: float
    signature: str
    ci95: list[float]


class CiderMetric(_Frozen):
    score: float
    ci95: list[float]
    scorer: Literal["CIDEr-D"]
    implementation: str
    tokenization: str


class BootstrapInfo(_Frozen):
    resamples: int
    seed: int
    unit: Literal["image"]
    interval: Literal["percentile"]


class Metrics(_Frozen):
    bleu: BleuMetric
    cider: CiderMetric
    bootstrap: BootstrapInfo


class PerImage(_Frozen):
    image_id: str
    caption: str
    tokens: list[int] = Field(description="decoder output ids after BOS, through EOS when reached")
    n_tokens: int
    references: list[str]
    cider: float


class Timing(_Frozen):
    seconds: float = Field(description="preprocessing + generate for all images (no model load, no image reading)")
    images_per_second: float
    preprocess_seconds: float
    generate_seconds: float
    torch_threads: int


class EvalRecord(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["bench.eval"] = Field(KIND, alias="schema")
    schema_version: int = VERSION
    subject: Subject
    dataset: DatasetInfo
    decoding: Decoding
    metrics: Metrics
    per_image: list[PerImage]
    timing: Timing
    environment: dict[str, Any]
    path: str | None = Field(default=None, exclude=True, description="where it was read from / written to")

    def payload(self) -> dict[str, Any]:
        """The JSON body (schema and version are stamped by bench.store.records)."""
        body = self.model_dump(mode="json", by_alias=True, exclude={"path"})
        body.pop("schema", None)
        body.pop("schema_version", None)
        return body

    @property
    def captions(self) -> list[str]:
        return [item.caption for item in self.per_image]

    @property
    def references(self) -> list[list[str]]:
        return [item.references for item in self.per_image]

    @property
    def image_ids(self) -> list[str]:
        return [item.image_id for item in self.per_image]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-system-safe folder name (subject ids come from directory names and variant ids)."""
    cleaned = _UNSAFE.sub("-", text).strip("-.")
    return cleaned or "subject"


def record_key(dataset_signature: str, decoding: Decoding) -> str:
    """12-hex hash of what makes two evaluations of one subject the same measurement."""
    blob = json.dumps({"dataset": dataset_signature, "decoding": decoding.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def record_path(evals_dir: Path, subject_id: str, dataset_signature: str, decoding: Decoding) -> Path:
    return Path(evals_dir) / safe_name(subject_id) / f"{record_key(dataset_signature, decoding)}.json"


def write_record(evals_dir: Path, record: EvalRecord, *, overwrite: bool = False) -> EvalRecord:
    """Write atomically (bench.store.records: immutable unless `overwrite`); return the record with its path."""
    path = record_path(evals_dir, record.subject.id, record.dataset.signature, record.decoding)
    if path.exists() and not overwrite:
        raise RecordError(f"{path}: this evaluation already exists (records are immutable); pass --overwrite to redo it")
    store.write(path, KIND, record.payload(), overwrite=overwrite)
    return record.model_copy(update={"path": str(path)})


def read_record(path: Path | str) -> EvalRecord:
    """Load, version-check, migrate and validate an eval record; problems are one RecordError line."""
    raw = store.read(path, KIND)
    return parse_record(raw, source=str(path))


def parse_record(raw: dict[str, Any], *, source: str = "record") -> EvalRecord:
    try:
        record = EvalRecord.model_validate(raw)
    except ValidationError as err:
        raise store.field_problem(err, source, "eval record") from None
    return record.model_copy(update={"path": source})


def binding(record: EvalRecord, evals_dir: Path) -> dict[str, str]:
    """How a run names the exact eval record it used: its path under results/evals/ and the sha256 of its bytes."""
    path = Path(record.path or "")
    try:
        relative = path.resolve().relative_to(Path(evals_dir).resolve())
        data = path.read_bytes()
    except (ValueError, OSError) as err:
        raise RecordError(f"{path}: cannot bind this eval record to the run ({err})") from None
    return {"record": relative.as_posix(), "sha256": hashlib.sha256(data).hexdigest()}


def read_bound(evals_dir: Path, bound: Any) -> dict[str, Any]:
    """The raw record a run's binding names, only if its bytes are still exactly the ones the run used."""
    if not (isinstance(bound, dict) and isinstance(bound.get("record"), str) and isinstance(bound.get("sha256"), str)):
        raise RecordError(f"damaged eval binding {bound!r} in run.json")
    parts = Path(bound["record"]).parts
    if len(parts) != 2 or any(part in ("..", ".") or "/" in part for part in parts) or not parts[1].endswith(".json"):
        raise RecordError(f"eval binding {bound['record']!r} in run.json does not name a record under {evals_dir}")
    path = Path(evals_dir) / bound["record"]
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RecordError(f"{path}: the eval record this run used is gone ({err.strerror or err})") from None
    if hashlib.sha256(data).hexdigest() != bound["sha256"]:
        raise RecordError(f"{path}: the eval record this run used was changed afterwards (sha256 differs); "
                          "its quality is not shown rather than another evaluation's")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: corrupt record ({err})") from None
    record = store.upgrade(raw, KIND, source=str(path))
    _check(record, str(path))
    return record


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class _ScoreShape(_Loose):
    score: float
    ci95: list[float | None] = Field(min_length=2, max_length=2)
    signature: str | None = None
    scorer: str | None = None


class _RecordShape(_Loose):
    """What any reader computes with, typed (read_record checks the whole EvalRecord on top of this)."""

    class _Dataset(_Loose):
        signature: str
        n: int = Field(ge=0)

    class _Metrics(_Loose):
        bleu: _ScoreShape
        cider: _ScoreShape

    class _Image(_Loose):
        image_id: str
        caption: str
        references: list[str]

    subject: dict[str, Any]
    dataset: _Dataset
    metrics: _Metrics
    per_image: list[_Image]


def _check(raw: dict[str, Any], source: str) -> None:
    """Every reader of an eval record (bench eval-compare, the report) gets one whose fields have the types it
    computes with, or one error naming the file and field."""
    try:
        _RecordShape.model_validate(raw)
    except ValidationError as err:
        raise store.field_problem(err, source, "eval record") from None


store.register_kind(KIND, VERSION, _check)


def list_records(evals_dir: Path) -> list[Path]:
    return sorted(Path(evals_dir).glob("*/*.json"))
