"""Caption-quality metrics from well-kept libraries, with bootstrap confidence intervals.

- BLEU: sacreBLEU corpus BLEU (default 13a tokenisation, exp smoothing, mixed case), every reference set
  of an image used at once (the Flickr30k style has 5). Its signature string is kept beside the score so two
  numbers are only compared when their signatures agree. The 0-1 scale is the same score / 100, as the seed
  reports it ("BLEU 0.241").
- CIDEr-D: pycocoevalcap's `Cider` scorer (clipped n-gram tf-idf, Gaussian length penalty, sigma 6 — the
  CIDEr-D of the COCO caption toolkit). The toolkit's PTBTokenizer needs Java, so captions are tokenised here
  by `cider_tokenize` instead (documented in CIDER_TOKENIZATION and stored with every record).
- Bootstrap: images are resampled with replacement (numpy, seeded). BLEU is a corpus statistic, so each
  resample re-aggregates per-image sufficient statistics (sacreBLEU's own) instead of re-tokenising: 1000
  resamples of 5000 images take well under a second. CIDEr-D is a mean of per-image scores whose idf comes
  from the references of the whole evaluated set; resamples average the per-image scores with that idf fixed.

numpy is imported at module level on purpose: it is light (~0.1 s) and this module is only imported by
evaluation code, never by `bench --help`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.errors import InputError

# Every number this module produces names how it was computed.
CIDER_SCORER = "CIDEr-D"
CIDER_TOKENIZATION = (
    "lowercase; words are maximal runs of letters/digits (unicode \\w without '_'); every other character, "
    "punctuation and apostrophes included, separates words and is dropped (PTBTokenizer not used: it needs Java)"
)
DEFAULT_RESAMPLES = 1000
CONFIDENCE = 0.95

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def cider_tokenize(text: str) -> str:
    """The tokenisation used for CIDEr-D: lowercase words, punctuation removed, joined by single spaces."""
    return " ".join(_WORD.findall(text.lower()))


# --------------------------------------------------------------------------------------------- inputs


def check_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Refuse inputs that would make a metric silently meaningless (empty corpus, image without references)."""
    if len(hypotheses) == 0:
        raise InputError("nothing to score: the evaluated set has no images")
    if len(hypotheses) != len(references):
        raise InputError(f"{len(hypotheses)} captions but {len(references)} reference sets")
    for index, refs in enumerate(references):
        if not any(isinstance(r, str) and r.strip() for r in refs):
            raise InputError(f"image #{index} has no non-empty reference caption")


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacreBLEU wants one stream per reference position; images with fewer references get None there."""
    width = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


# --------------------------------------------------------------------------------------------- BLEU


@dataclass(frozen=True)
class BleuStats:
    """Per-image sacreBLEU sufficient statistics: [hyp_len, ref_len, correct_1..4, total_1..4] per row."""

    rows: np.ndarray  # float64 [N, 2 + 2 * order]
    signature: str
    metric: object = field(repr=False)  # the sacrebleu.BLEU that produced them (scores sums of rows)

    def score(self, summed: np.ndarray) -> float:
        """Corpus BLEU (0-100) of already-summed statistics, computed by sacreBLEU itself."""
        return float(self.metric._compute_score_from_stats(summed.tolist()).score)

    def corpus_score(self) -> float:
        return self.score(self.rows.sum(axis=0))

    def resampled_scores(self, counts: np.ndarray) -> np.ndarray:
        """BLEU of every bootstrap resample; counts[b, i] = times image i was drawn in resample b."""
        sums = counts @ self.rows  # [B, stats]: exact integer sums held in float64
        return np.array([self.score(row) for row in sums])


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> BleuStats:
    """sacreBLEU's per-sentence statistics for the corpus, ready for corpus scoring and bootstrap resampling.

    Uses sacreBLEU's own statistic extraction (`_extract_corpus_statistics`), so the corpus score equals
    `BLEU().corpus_score(...)` and the `sacrebleu` command line exactly.
    """
    from sacrebleu.metrics import BLEU

    check_corpus(hypotheses, references)
    metric = BLEU()
    streams = _reference_streams(references)
    rows = np.asarray(metric._extract_corpus_statistics(list(hypotheses), streams), dtype=np.float64)
    # The reference count enters the signature only once references were cached (inside the call above).
    signature = str(metric.get_signature())
    return BleuStats(rows=rows, signature=signature, metric=metric)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, str]:
    """(score 0-100, sacreBLEU signature) using sacreBLEU's public API."""
    from sacrebleu.metrics import BLEU

    check_corpus(hypotheses, references)
    metric = BLEU()
    score = metric.corpus_score(list(hypotheses), _reference_streams(references))
    return float(score.score), str(metric.get_signature())


# --------------------------------------------------------------------------------------------- CIDEr-D


def cider_per_image(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """Per-image CIDEr-D from pycocoevalcap's scorer; the corpus score is their mean.

    The idf comes from the references of exactly these images, as in the COCO toolkit; a metric over a
    different image set is a different metric.
    """
    from pycocoevalcap.cider.cider import Cider

    check_corpus(hypotheses, references)
    keys = [str(i) for i in range(len(hypotheses))]
    result = {k: [cider_tokenize(h)] for k, h in zip(keys, hypotheses)}
    truth = {k: [cider_tokenize(r) for r in refs if isinstance(r, str) and r.strip()] for k, refs in zip(keys, references)}
    if len(keys) == 1:
        # With one image idf is log(1) - log(df) = 0 for every n-gram: CIDEr-D is 0 by construction.
        return np.zeros(1)
    _, scores = Cider().compute_score(truth, result)
    return np.asarray(scores, dtype=np.float64)


# --------------------------------------------------------------------------------------------- bootstrap


# Count matrices are built in chunks of at most this many cells (~32 MB of float64), so that 1000 resamples
# of a 30k-image set do not need gigabytes.
MAX_COUNT_CELLS = 4_000_000


def resample_counts(n_items: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """counts[b, i]: how often item i is drawn in bootstrap resample b (n_items draws with replacement).

    A count matrix instead of index lists: resampled sums become one matrix product whatever the width of
    the per-item statistic. For large sets use `bootstrap`, which builds it chunk by chunk.
    """
    return np.concatenate(list(_count_chunks(n_items, n_resamples, seed)), axis=0)


def _count_chunks(n_items: int, n_resamples: int, seed: int):
    if n_items <= 0 or n_resamples <= 0:
        raise InputError("bootstrap needs at least one item and one resample")
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, MAX_COUNT_CELLS // n_items)
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        draws = rng.integers(0, n_items, size=(rows, n_items))
        flat = draws + (np.arange(rows)[:, None] * n_items)
        yield np.bincount(flat.ravel(), minlength=rows * n_items).reshape(rows, n_items).astype(np.float64)


def bootstrap(n_items: int, n_resamples: int, seed: int, *statistics) -> list[np.ndarray]:
    """Evaluate each `statistic(counts) -> values per resample` on the same seeded resamples.

    Paired tests pass two statistics so both systems see exactly the same resampled image sets.
    """
    collected: list[list[np.ndarray]] = [[] for _ in statistics]
    for counts in _count_chunks(n_items, n_resamples, seed):
        for bucket, statistic in zip(collected, statistics):
            bucket.append(np.asarray(statistic(counts), dtype=np.float64))
    return [np.concatenate(bucket) for bucket in collected]


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
    """Percentile bootstrap interval [lo, hi]."""
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def mean_resampled(per_item: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of a per-item score in every resample (each resample draws exactly n items)."""
    return (counts @ per_item) / counts.sum(axis=1)


@dataclass(frozen=True)
class CorpusMetrics:
    bleu: float
    bleu_signature: str
    bleu_ci95: list[float]
    cider: float
    cider_ci95: list[float]
    cider_per_image: list[float]
    resamples: int
    seed: int

    def as_record(self) -> dict:
        return {
            "bleu": {
                "score": self.bleu,
                "score_01": self.bleu / 100.0,
                "signature": self.bleu_signature,
                "ci95": self.bleu_ci95,
            },
            "cider": {
                "score": self.cider,
                "ci95": self.cider_ci95,
                "scorer": CIDER_SCORER,
                "implementation": "pycocoevalcap.cider.cider.Cider (n=4, sigma=6)",
                "tokenization": CIDER_TOKENIZATION,
            },
            "bootstrap": {"resamples": self.resamples, "seed": self.seed, "unit": "image", "interval": "percentile"},
        }


def score_corpus(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> CorpusMetrics:
    """BLEU and CIDEr-D of a corpus with bootstrap 95 % intervals over images."""
    bleu = bleu_statistics(hypotheses, references)
    cider = cider_per_image(hypotheses, references)
    bleu_resampled, cider_resampled = bootstrap(
        len(hypotheses), resamples, seed, bleu.resampled_scores, lambda counts: mean_resampled(cider, counts)
    )
    return CorpusMetrics(
        bleu=bleu.corpus_score(),
        bleu_signature=bleu.signature,
        bleu_ci95=percentile_interval(bleu_resampled),
        cider=float(cider.mean()),
        cider_ci95=percentile_interval(cider_resampled),
        cider_per_image=[float(x) for x in cider],
        resamples=resamples,
        seed=seed,
    )


@dataclass(frozen=True)
class PairedResult:
    """Variant minus baseline on the same images. p_value: two-sided, H0 = no difference."""

    metric: str
    baseline: float
    variant: float
    delta: float
    ci95: list[float]
    p_value: float
    n_images: int
    resamples: int
    seed: int

    def as_dict(self) -> dict:
        return {
            "metric": self.metric,
            "baseline": self.baseline,
            "variant": self.variant,
            "delta": self.delta,
            "ci95": self.ci95,
            "p_value": self.p_value,
            "n_images": self.n_images,
            "resamples": self.resamples,
            "seed": self.seed,
        }


METRICS = ("bleu", "cider")


def paired_bootstrap_scores(
    baseline: Sequence[str],
    variant: Sequence[str],
    references: Sequence[Sequence[str]],
    metric: str = "bleu",
    *,
    n: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedResult:
    """Paired bootstrap test of variant vs baseline captions of the same images.

    Both systems are scored on the *same* resampled image sets. delta = variant − baseline; its interval is
    the percentile interval of the resampled deltas. The p-value shifts the resampled deltas to mean zero
    (the null of no difference) and counts how often they are at least as extreme as the observed delta:
    p = (1 + #{|d_b − mean(d)| ≥ |delta|}) / (n + 1). Identical systems give delta 0 and p = 1 (unlike
    sacreBLEU's paired_bs, whose strict '>' reports p ≈ 0.001 for a system against itself).
    """
    if metric not in METRICS:
        from bench.errors import did_you_mean

        raise did_you_mean("metric", metric, METRICS)
    if len(baseline) != len(variant):
        raise InputError(f"paired test needs the same images: {len(baseline)} vs {len(variant)} captions")
    if metric == "bleu":
        a, b = bleu_statistics(baseline, references), bleu_statistics(variant, references)
        score_a, score_b = a.corpus_score(), b.corpus_score()
        (deltas,) = bootstrap(
            len(baseline), n, seed, lambda counts: b.resampled_scores(counts) - a.resampled_scores(counts)
        )
    else:
        a_img, b_img = cider_per_image(baseline, references), cider_per_image(variant, references)
        score_a, score_b = float(a_img.mean()), float(b_img.mean())
        (deltas,) = bootstrap(len(baseline), n, seed, lambda counts: mean_resampled(b_img - a_img, counts))
    return paired_result(metric, score_a, score_b, deltas, n_images=len(baseline), seed=seed)


def paired_result(metric: str, score_a: float, score_b: float, deltas: np.ndarray, *, n_images: int,
                  seed: int) -> PairedResult:
    """The paired test's interval and p-value from resampled deltas (b − a on the same resampled image sets); see
    paired_bootstrap_scores. Callers that already hold both sides' statistics use it directly."""
    observed = score_b - score_a
    centred = np.abs(deltas - deltas.mean())
    # A tiny tolerance so that float noise around an exact tie still counts as "as extreme".
    extreme = int(np.sum(centred >= abs(observed) - 1e-12))
    return PairedResult(
        metric=metric,
        baseline=score_a,
        variant=score_b,
        delta=observed,
        ci95=percentile_interval(deltas),
        p_value=(1 + extreme) / (len(deltas) + 1),
        n_images=n_images,
        resamples=len(deltas),
        seed=seed,
    )
