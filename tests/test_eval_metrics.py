"""Caption metrics against the real libraries: the sacrebleu command line, pycocoevalcap's CIDEr-D, bootstrap.

Nothing is faked: sacrebleu 2.6 and pycocoevalcap 1.2 from the venv compute every number here.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.errors import InputError
from bench.eval import metrics

SACREBLEU_CLI = Path(sys.executable).parent / "sacrebleu"

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star")
RELATIONS = ("left of", "right of", "above", "below", "next to")


def synthetic_corpus(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Captions of coloured shapes with 5 paraphrased references each; the hypothesis is a mild corruption."""
    rng = random.Random(seed)
    hyps, refs = [], []
    for _ in range(n):
        a, b = rng.choice(COLOURS), rng.choice(COLOURS)
        s, t = rng.choice(SHAPES), rng.choice(SHAPES)
        rel = rng.choice(RELATIONS)
        refs.append([
            f"A {a} {s} {rel} a {b} {t}.",
            f"a {a} {s} is {rel} the {b} {t}",
            f"There is a {a} {s} {rel} a {b} {t} .",
            f"The {a} {s} sits {rel} a {b} {t}",
            f"{a} {s} {rel} {b} {t}",
        ])
        if rng.random() < 0.5:
            hyps.append(f"a {a} {s} {rel} a {b} {t}")
        else:
            hyps.append(f"a {rng.choice(COLOURS)} {s} {rng.choice(RELATIONS)} a {t}")
    return hyps, refs


def test_sacrebleu_score_equals_command_line(tmp_path):
    """Our corpus BLEU (and the fast statistics path) equal `sacrebleu ref1..ref5 -i hyp` on the same files."""
    hyps, refs = synthetic_corpus(60)
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    ref_files = []
    for k in range(5):
        path = tmp_path / f"ref{k}.txt"
        path.write_text("\n".join(r[k] for r in refs) + "\n", encoding="utf-8")
        ref_files.append(str(path))
    done = subprocess.run(
        [str(SACREBLEU_CLI), *ref_files, "-i", str(tmp_path / "hyp.txt"), "-m", "bleu", "-w", "6", "-f", "json"],
        capture_output=True, text=True, check=True,
    )
    cli = json.loads(done.stdout)

    score, signature = metrics.corpus_bleu(hyps, refs)
    stats = metrics.bleu_statistics(hyps, refs)
    assert score == pytest.approx(cli["score"], abs=1e-5)
    assert stats.corpus_score() == pytest.approx(cli["score"], abs=1e-5)
    assert signature == cli["signature"] == stats.signature
    assert "nrefs:5" in signature and "version:2.6.0" in signature
    assert 5 < score < 95  # a real, non-degenerate corpus


def test_score_01_scale_is_bleu_over_100():
    hyps, refs = synthetic_corpus(30)
    result = metrics.score_corpus(hyps, refs, resamples=200)
    record = result.as_record()
    assert record["bleu"]["score_01"] == pytest.approx(record["bleu"]["score"] / 100)
    assert record["cider"]["scorer"] == "CIDEr-D"
    assert "Java" in record["cider"]["tokenization"]


def test_cider_identical_captions_score_high_and_disjoint_zero():
    refs = [
        ["a red circle left of a blue square"] * 5,
        ["two green triangles above a star"] * 5,
        ["a yellow star below an orange circle"] * 5,
        ["the purple square is next to the red star"] * 5,
    ]
    identical = [r[0] for r in refs]
    disjoint = ["zebra quantum umbrella", "violin marmalade", "kettle nebula", "saxophone lantern"]
    same = metrics.cider_per_image(identical, refs)
    none = metrics.cider_per_image(disjoint, refs)
    # An exact match scores 10 (cosine 1 on every n-gram order, times CIDEr-D's factor 10).
    assert same == pytest.approx(np.full(4, 10.0), rel=1e-6)
    assert none == pytest.approx(np.zeros(4))


def test_cider_tokenisation_ignores_case_and_punctuation():
    refs = [["A red circle, left of a blue square."] * 5, ["Two green triangles, above a star!"] * 5]
    plain = metrics.cider_per_image(["a red circle left of a blue square", "two green triangles above a star"], refs)
    assert plain == pytest.approx([10.0, 10.0], rel=1e-6)
    assert metrics.cider_tokenize("The dog's ball, RED.") == "the dog s ball red"


def test_cider_matches_pycocoevalcap_scorer_directly():
    """Our per-image scores are exactly pycocoevalcap's on pre-tokenised text (no re-implementation)."""
    from pycocoevalcap.cider.cider import Cider

    hyps, refs = synthetic_corpus(25, seed=3)
    ours = metrics.cider_per_image(hyps, refs)
    keys = [str(i) for i in range(len(hyps))]
    mean, theirs = Cider().compute_score(
        {k: [metrics.cider_tokenize(r) for r in rs] for k, rs in zip(keys, refs)},
        {k: [metrics.cider_tokenize(h)] for k, h in zip(keys, hyps)},
    )
    assert ours == pytest.approx(theirs)
    assert ours.mean() == pytest.approx(mean)


def test_bootstrap_ci_contains_point_estimate_and_shrinks_with_n():
    small_h, small_r = synthetic_corpus(40, seed=1)
    large_h, large_r = synthetic_corpus(640, seed=1)
    small = metrics.score_corpus(small_h, small_r, resamples=500, seed=0)
    large = metrics.score_corpus(large_h, large_r, resamples=500, seed=0)
    for result in (small, large):
        assert result.bleu_ci95[0] <= result.bleu <= result.bleu_ci95[1]
        assert result.cider_ci95[0] <= result.cider <= result.cider_ci95[1]
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    # 16x the images: the interval should be about 4x narrower; demand at least 2x.
    assert width(large.bleu_ci95) < width(small.bleu_ci95) / 2
    assert width(large.cider_ci95) < width(small.cider_ci95) / 2


def test_bootstrap_is_seeded():
    hyps, refs = synthetic_corpus(50)
    a = metrics.score_corpus(hyps, refs, resamples=300, seed=7)
    b = metrics.score_corpus(hyps, refs, resamples=300, seed=7)
    c = metrics.score_corpus(hyps, refs, resamples=300, seed=8)
    assert a.bleu_ci95 == b.bleu_ci95
    assert a.bleu_ci95 != c.bleu_ci95


def test_resampled_bleu_equals_sacrebleu_on_the_resampled_corpus():
    """The fast statistics path gives sacreBLEU's own score of an explicitly resampled corpus."""
    from sacrebleu.metrics import BLEU

    hyps, refs = synthetic_corpus(40, seed=2)
    counts = metrics.resample_counts(len(hyps), 3, seed=5)
    fast = metrics.bleu_statistics(hyps, refs).resampled_scores(counts)
    for row, score in zip(counts, fast):
        picked = [i for i, c in enumerate(row) for _ in range(int(c))]
        resampled_refs = [[refs[i][k] for i in picked] for k in range(5)]
        slow = BLEU().corpus_score([hyps[i] for i in picked], resampled_refs).score
        assert score == pytest.approx(slow, abs=1e-9)


def test_paired_bootstrap_identical_systems_show_no_difference():
    hyps, refs = synthetic_corpus(80)
    for metric in ("bleu", "cider"):
        result = metrics.paired_bootstrap_scores(hyps, list(hyps), refs, metric, n=500)
        assert result.delta == 0.0
        assert result.ci95 == [0.0, 0.0]
        assert result.p_value == 1.0


def test_paired_bootstrap_detects_a_clearly_worse_system():
    hyps, refs = synthetic_corpus(80)
    rng = random.Random(0)
    worse = [" ".join(rng.sample(h.split(), len(h.split()))[:3]) for h in hyps]  # shuffled, truncated
    for metric in ("bleu", "cider"):
        result = metrics.paired_bootstrap_scores(hyps, worse, refs, metric, n=500)
        assert result.delta < 0
        assert result.ci95[1] < 0
        assert result.p_value < 0.01


def test_paired_bootstrap_small_noise_is_not_significant():
    """Two systems differing on one image of 200 are not called different."""
    hyps, refs = synthetic_corpus(200)
    other = list(hyps)
    other[0] = "a shape"
    result = metrics.paired_bootstrap_scores(hyps, other, refs, "bleu", n=500)
    assert result.ci95[0] <= result.delta <= result.ci95[1]
    assert result.p_value > 0.05


@pytest.mark.parametrize(
    "hyps, refs, message",
    [
        ([], [], "no images"),
        (["a"], [["x"], ["y"]], "reference sets"),
        (["a", "b"], [["x"], ["", "  "]], "no non-empty reference"),
    ],
)
def test_bad_corpus_is_one_clear_error(hyps, refs, message):
    with pytest.raises(InputError, match=message):
        metrics.score_corpus(hyps, refs)


def test_unknown_metric_suggests_the_known_one():
    with pytest.raises(InputError, match="did you mean 'cider'"):
        metrics.paired_bootstrap_scores(["a"], ["a"], [["a"]], "cidr")


def test_chunked_resampling_covers_every_resample(monkeypatch):
    """Large sets are resampled chunk by chunk; every resample draws exactly n images and all are returned."""
    monkeypatch.setattr(metrics, "MAX_COUNT_CELLS", 100)  # 50 images → chunks of 2 resamples
    hyps, refs = synthetic_corpus(50)
    counts = metrics.resample_counts(50, 7, seed=1)
    assert counts.shape == (7, 50) and (counts.sum(axis=1) == 50).all()
    result = metrics.score_corpus(hyps, refs, resamples=101)
    assert result.bleu_ci95[0] <= result.bleu <= result.bleu_ci95[1]
    (values,) = metrics.bootstrap(50, 101, 0, lambda c: c.sum(axis=1))
    assert values.shape == (101,) and (values == 50).all()
