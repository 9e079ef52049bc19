"""Scores and their standard errors, base vs fine-tuned: BLEU-4 (sacrebleu), ROUGE-1/2/L (rouge-score), exact
match, token loss and perplexity.

Standard errors: metrics that are means over examples (ROUGE, exact match) use the analytic standard error of
the mean, and of the mean paired difference for the delta. Corpus-level metrics (loss = total NLL / total
tokens, perplexity, BLEU) use a paired bootstrap over examples: the same resampled examples score both models,
so the delta's standard error accounts for their correlation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
SHORT_REFERENCE_WORDS = 10


def normalize(text: str) -> str:
    """Case-folded, whitespace-collapsed text for exact match."""
    return " ".join(text.casefold().split())


def references_are_short(references: list[str]) -> bool:
    """Whether exact match is meaningful: most references are at most a few words."""
    if not references:
        return False
    short = sum(len(r.split()) <= SHORT_REFERENCE_WORDS or len(r) <= 3 * SHORT_REFERENCE_WORDS for r in references)
    return short >= 0.9 * len(references)


def exact_match(hypotheses: list[str], references: list[str]) -> np.ndarray:
    """1.0 where the normalized hypothesis equals the normalized reference (x100 for percent)."""
    return np.array([100.0 * (normalize(h) == normalize(r)) for h, r in zip(hypotheses, references)])


def _bleu_metric(references: list[str]) -> Any:
    from sacrebleu.metrics import BLEU

    tokenize = "zh" if any(_CJK.search(r) for r in references) else "13a"
    return BLEU(tokenize=tokenize, effective_order=False)


def bleu_stats(metric: Any, hypotheses: list[str], references: list[str]) -> np.ndarray:
    """sacrebleu's per-segment BLEU statistics (matches and totals per n-gram order, lengths)."""
    return np.asarray(metric._extract_corpus_statistics(hypotheses, [references]), dtype=np.float64)


def bleu_from_sums(metric: Any) -> Callable[[np.ndarray], float]:
    """Corpus BLEU-4 from summed segment statistics."""
    return lambda sums: float(metric._compute_score_from_stats(list(sums)).score)


def rouge(hypotheses: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Per-example ROUGE-1/2/L F-measures (x100), with stemming."""
    from rouge_score import rouge_scorer

    cjk = any(_CJK.search(r) for r in references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=not cjk, tokenizer=_CharTokenizer() if cjk else None)
    rows = [scorer.score(r, h) for h, r in zip(hypotheses, references)]
    return {key: np.array([100.0 * row[key].fmeasure for row in rows]) for key in ("rouge1", "rouge2", "rougeL")}


class _CharTokenizer:
    """Character tokens for CJK text (rouge-score's default tokenizer keeps only a-z and 0-9)."""

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text.lower() if not c.isspace()]


def loss_from_sums(sums: np.ndarray) -> float:
    """Mean token loss from summed (nll, tokens)."""
    return float(sums[0] / max(sums[1], 1.0))


def ppl_from_sums(sums: np.ndarray) -> float:
    """Perplexity from summed (nll, tokens)."""
    return float(math.exp(min(loss_from_sums(sums), 700.0)))


def _row(name: str, base: float | None, tuned: float, base_se: float | None, tuned_se: float | None,
         delta_se: float | None, n: int, method: str, higher_is_better: bool) -> dict[str, Any]:
    def r(x: float | None) -> float | None:
        return None if x is None or not math.isfinite(x) else round(float(x), 6)

    return {
        "name": name, "base": r(base), "tuned": r(tuned), "delta": r(tuned - base) if base is not None else None,
        "base_stderr": r(base_se), "tuned_stderr": r(tuned_se), "delta_stderr": r(delta_se), "n": n,
        "stderr_method": method, "higher_is_better": higher_is_better,
    }


def mean_metric(name: str, tuned: np.ndarray, base: np.ndarray | None, higher_is_better: bool = True) -> dict[str, Any]:
    """A metric that is a mean over examples; analytic (paired) standard errors."""
    n = len(tuned)

    def se(values: np.ndarray) -> float | None:
        return float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None

    return _row(
        name, float(base.mean()) if base is not None else None, float(tuned.mean()),
        se(base) if base is not None else None, se(tuned), se(tuned - base) if base is not None else None,
        n, "standard error of the mean (paired for the delta)", higher_is_better,
    )


def corpus_metric(
    name: str, tuned: np.ndarray, base: np.ndarray | None, from_sums: Callable[[np.ndarray], float],
    bootstrap: int, seed: int, higher_is_better: bool,
) -> dict[str, Any]:
    """A metric computed from summed per-example statistics; paired-bootstrap standard errors."""
    n = len(tuned)
    value_t = from_sums(tuned.sum(axis=0))
    value_b = from_sums(base.sum(axis=0)) if base is not None else None
    if bootstrap < 2 or n < 2:
        return _row(name, value_b, value_t, None, None, None, n, "none (too few examples or bootstrap=0)", higher_is_better)
    rng = np.random.default_rng(seed)
    boot_t, boot_b = np.empty(bootstrap), np.empty(bootstrap)
    for i in range(bootstrap):
        idx = rng.integers(0, n, n)
        boot_t[i] = from_sums(tuned[idx].sum(axis=0))
        if base is not None:
            boot_b[i] = from_sums(base[idx].sum(axis=0))
    paired = base is not None
    return _row(
        name, value_b, value_t, float(boot_b.std(ddof=1)) if paired else None, float(boot_t.std(ddof=1)),
        float((boot_t - boot_b).std(ddof=1)) if paired else None, n, f"paired bootstrap over examples ({bootstrap} resamples)",
        higher_is_better,
    )


def loss_rows(tuned: np.ndarray, base: np.ndarray | None, bootstrap: int, seed: int) -> list[dict[str, Any]]:
    """eval_loss and perplexity rows from per-example (nll_sum, tokens)."""
    return [
        corpus_metric("loss", tuned, base, loss_from_sums, bootstrap, seed, higher_is_better=False),
        corpus_metric("perplexity", tuned, base, ppl_from_sums, bootstrap, seed, higher_is_better=False),
    ]


def generation_rows(
    references: list[str], tuned: list[str], base: list[str] | None, bootstrap: int, seed: int
) -> list[dict[str, Any]]:
    """BLEU-4, ROUGE-1/2/L and (for short references) exact match rows."""
    metric = _bleu_metric(references)
    rows = [
        corpus_metric(
            "bleu4", bleu_stats(metric, tuned, references), bleu_stats(metric, base, references) if base is not None else None,
            bleu_from_sums(metric), bootstrap, seed, higher_is_better=True,
        )
    ]
    rouge_t = rouge(tuned, references)
    rouge_b = rouge(base, references) if base is not None else None
    for key in ("rouge1", "rouge2", "rougeL"):
        rows.append(mean_metric(key, rouge_t[key], rouge_b[key] if rouge_b else None))
    if references_are_short(references):
        rows.append(mean_metric(
            "exact_match", exact_match(tuned, references), exact_match(base, references) if base is not None else None
        ))
    return rows
