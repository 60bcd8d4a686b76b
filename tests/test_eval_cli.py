"""`bench eval` end to end: a real (tiny, random) BLIP checkpoint on disk, a JSONL manifest of real PNG files,
the real dataset loader, the real CLI entry point (bench.cli.main) and the record read back from results/.

Variants (Core ML packages decompressed into torch) are built by bench.build; here a variant directory is
only used to check the clear error when that support is absent.
"""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.errors import IncomparableError
from bench.eval.evaluation import EvalOptions, evaluate, paired_bootstrap
from bench.eval.records import KIND, list_records, read_record

from eval_fixtures import memory_dataset, save_tiny_checkpoint, tiny_captioner, write_manifest


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-eval-cli") / "tiny-ckpt")


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(*args: str) -> int:
    return main(["eval", *args])


def one_error_line(stderr: str) -> str:
    """The single 'error:' line the CLI printed (transformers' loading bars, if any, are not ours), no traceback."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert stderr.rstrip("\n").endswith(lines[0]), stderr
    return lines[0]


def test_bench_eval_writes_a_record_that_reads_back(checkpoint, workspace, capsys):
    manifest = write_manifest(workspace / "data", 12)
    code = run_cli(str(checkpoint), "--data", f"manifest:{manifest}", "--split", "test", "--limit", "8",
                   "--beams", "2", "--batch-size", "4", "--image-size", "40", "--resize", "center_crop",
                   "--resamples", "200", "--threads", "1")
    out = capsys.readouterr()
    assert code == 0, out.err
    paths = list_records(workspace / "results" / "evals")
    assert len(paths) == 1
    raw = json.loads(paths[0].read_text())
    assert list(raw)[:2] == ["schema", "schema_version"] and raw["schema"] == KIND and raw["schema_version"] == 1

    record = read_record(paths[0])
    assert record.subject.kind == "checkpoint"
    assert record.subject.weights_sha256 == tiny_captioner(checkpoint).weights_sha256
    assert paths[0].parent.name == record.subject.id
    assert record.dataset.n == 8 and len(record.per_image) == 8
    assert record.dataset.spec == f"manifest:{manifest}"
    assert record.decoding.model_dump() == {
        "strategy": "beam", "beams": 2, "max_length": 12, "batch_size": 4, "image_size": 40, "resize": "center_crop",
    }
    for item in record.per_image:
        assert item.n_tokens == len(item.tokens) >= 1
        assert len(item.references) == 5
    bleu = record.metrics.bleu
    assert bleu.signature.startswith("nrefs:5|") and bleu.score_01 == pytest.approx(bleu.score / 100)
    assert bleu.ci95[0] <= bleu.score <= bleu.ci95[1]
    assert record.metrics.cider.ci95[0] <= record.metrics.cider.score <= record.metrics.cider.ci95[1]
    assert record.timing.images_per_second > 0 and record.timing.torch_threads == 1
    assert record.environment["packages"]["sacrebleu"] == "2.6.0"
    assert "sacreBLEU" in out.out and str(paths[0]) in out.out

    # Records are immutable: the same evaluation again is refused in one line, unless --overwrite.
    again = run_cli(str(checkpoint), "--data", f"manifest:{manifest}", "--limit", "8", "--beams", "2",
                    "--batch-size", "4", "--image-size", "40", "--resize", "center_crop", "--resamples", "200")
    err = capsys.readouterr().err
    assert again == 2 and one_error_line(err).endswith("pass --overwrite to redo it")


def test_paired_bootstrap_between_records(checkpoint, tmp_path):
    """Same subject twice → no difference; another subject on the same images → compared; other images → refused."""
    captioner = tiny_captioner(checkpoint)
    other = tiny_captioner(save_tiny_checkpoint(tmp_path / "other", seed=1))
    dataset = memory_dataset(10)
    options = EvalOptions(resamples=200, threads=1)
    a = evaluate(captioner, dataset, options, evals_dir=tmp_path / "evals")
    b = evaluate(other, dataset, options, evals_dir=tmp_path / "evals")
    assert a.path != b.path

    same = paired_bootstrap(a.path, a.path, "bleu", n=200)
    assert same["delta"] == 0 and same["p_value"] == 1.0
    versus = paired_bootstrap(a, b, "cider", n=200)
    assert versus["delta"] == pytest.approx(b.metrics.cider.score - a.metrics.cider.score)
    assert versus["ci95"][0] <= versus["delta"] <= versus["ci95"][1]
    assert versus["baseline_subject"] == a.subject.id and versus["variant_subject"] == b.subject.id

    fewer = evaluate(captioner, memory_dataset(6), options)
    with pytest.raises(IncomparableError):
        paired_bootstrap(a, fewer, "bleu")
    beam = evaluate(captioner, dataset, EvalOptions(resamples=200, beams=2, threads=1))
    with pytest.raises(IncomparableError, match="beams"):
        paired_bootstrap(a, beam, "bleu")


def test_eval_compare_command_prints_the_paired_test(checkpoint, tmp_path, capsys):
    captioner = tiny_captioner(checkpoint)
    record = evaluate(captioner, memory_dataset(6), EvalOptions(resamples=200, threads=1), evals_dir=tmp_path)
    code = main(["eval-compare", record.path, record.path, "--metric", "cider", "--resamples", "200"])
    out = capsys.readouterr().out
    assert code == 0 and "delta +0.000" in out and "p = 1.0000" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "no such checkpoint directory"),
        (["int8-0123456789ac"], "no such checkpoint directory, and unknown variant 'int8-0123456789ac'"),
        (["{ckpt}", "--beams", "0"], "beams must be at least 1"),
        (["{ckpt}", "--image-size", "99999"], "image size must be 8 to 1536 pixels"),
        (["{ckpt}", "--resize", "crop"], "did you mean 'center_crop'"),
        (["{ckpt}", "--data", "manifest:{empty}"], "empty"),
        (["{ckpt}", "--data", "nosuchkind"], "unknown dataset kind"),
    ],
)
def test_bad_input_is_one_line(checkpoint, workspace, capsys, args, message):
    empty = workspace / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    values = {"missing": str(workspace / "nope"), "ckpt": str(checkpoint), "empty": str(empty)}
    code = run_cli(*[a.format(**values) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in one_error_line(err)
    assert not (workspace / "results" / "evals").exists()  # nothing half-written


def test_variant_without_variant_support_is_one_line(workspace, capsys, monkeypatch):
    """A variant id resolves to models/variants/<id>; if bench.build cannot decompress it, say so in one line.

    bench.build.torch_weights is hidden here (it is another stage's module) to exercise the missing-support path.
    """
    import sys

    variant = workspace / "models" / "variants" / "int8-0123456789ab"
    variant.mkdir(parents=True)
    (variant / "manifest.json").write_text("{}", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "bench.build.torch_weights", None)
    code = run_cli("int8-0123456789ab", "--data", "synthetic", "--limit", "2")
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "bench.build.torch_weights" in line and "int8-0123456789ab" in line


def test_unreadable_records_are_refused_in_one_line(checkpoint, tmp_path):
    from bench.errors import RecordError

    record = evaluate(tiny_captioner(checkpoint), memory_dataset(3), EvalOptions(resamples=100, threads=1),
                      evals_dir=tmp_path)
    raw = json.loads(open(record.path).read())
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**raw, "schema_version": 2}))
    with pytest.raises(RecordError, match="newer than this bench"):
        read_record(newer)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**raw, "per_image": [{"image_id": "x"}]}))
    with pytest.raises(RecordError, match="invalid eval record at per_image"):
        read_record(broken)


def test_misspelt_compute_unit_is_named_before_the_platform_check(workspace, capsys):
    assert main(["eval", "any-variant", "--compute-unit", "cpuonly"]) == 2
    assert "unknown compute unit 'cpuonly'; did you mean 'cpuOnly'" in capsys.readouterr().err
