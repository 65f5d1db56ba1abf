"""ETS's clustering threshold for the step embedder in use: how far apart paraphrases of one reasoning step are,
and how far apart different steps of the same problem are.

    python -m bench.ets_threshold          # writes bench/results/ets_threshold.json and prints the table

ETS merges steps whose embeddings are closer than a cosine-distance threshold; the reference's 0.05 was tuned
for its math-similarity embedder. With the packaged all-MiniLM-L6-v2, paraphrases of one step are further apart
than that, so 0.05 makes every step its own cluster and the coverage term then rewards keeping every node. This
measures, on hand-written R1-style steps (:data:`PROBLEMS`: each problem has steps, each step three phrasings),
the distance distributions of paraphrase pairs and of pairs of different steps of the same problem (the hard
negatives: same numbers and words, another idea), for the embedder and for the lexical TF-IDF clusterer, and
picks the threshold that best separates them (the midpoint of the widest gap between the two, else the
equal-error point).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench import commit
from orchestrator.config import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results" / "ets_threshold.json"

# Each problem: its steps, each step in three phrasings a sampler might write.
PROBLEMS: list[list[list[str]]] = [
    [
        [
            "First, let's find the sum of the roots using Vieta's formulas: it is -b/a = 5.",
            "By Vieta, the roots add up to -b/a, which is 5.",
            "Using Vieta's formulas, the sum of the two roots equals 5.",
        ],
        [
            "Now the product of the roots is c/a = 6.",
            "Next, Vieta also gives the product of the roots: c/a = 6.",
            "The product of the roots, again by Vieta, is 6.",
        ],
        [
            "So the roots are 2 and 3, and the sum of their squares is 4 + 9 = 13.",
            "Therefore the roots must be 2 and 3, giving squares summing to 13.",
            "The roots are 2 and 3, so 2^2 + 3^2 = 13.",
        ],
    ],
    [
        [
            "Let me set up the equation: if x is the number of apples, then 3x + 4 = 19.",
            "Call the number of apples x. The condition says 3x + 4 = 19.",
            "Okay, let x be how many apples there are, so 3x + 4 equals 19.",
        ],
        [
            "Subtracting 4 from both sides gives 3x = 15.",
            "Taking 4 away from each side, 3x = 15.",
            "So 3x = 19 - 4 = 15.",
        ],
        [
            "Dividing by 3, x = 5, so there are 5 apples.",
            "Then x = 15 / 3 = 5 apples.",
            "Hence x is 5: five apples.",
        ],
    ],
    [
        [
            "The area of the circle is pi r^2, and the radius is 3, so the area is 9 pi.",
            "With radius 3, the circle's area is pi times 9, that is 9 pi.",
            "Area = pi * 3^2 = 9pi.",
        ],
        [
            "The square has side 6 because the circle is inscribed in it, so its area is 36.",
            "Since the circle is inscribed, the square's side equals the diameter, 6, giving area 36.",
            "The side of the square is the diameter 6, so the square's area is 36.",
        ],
        [
            "The shaded region is the square minus the circle: 36 - 9 pi.",
            "Subtracting the circle from the square, the shaded area is 36 - 9pi.",
            "So the shaded part has area 36 minus 9 pi.",
        ],
    ],
    [
        [
            "Hmm, wait. I should check whether n = 1 works: 1 + 1 = 2 is prime, so yes.",
            "Wait, let me test n = 1 first: 1 + 1 = 2, which is prime, so it works.",
            "Let me verify the case n = 1: we get 2, a prime, so n = 1 is valid.",
        ],
        [
            "For even n greater than 1, n^2 + 1 is odd, so it could be prime; try n = 2: 5 is prime.",
            "Try n = 2: n^2 + 1 = 5, which is prime.",
            "With n = 2 we get 4 + 1 = 5, prime as well.",
        ],
        [
            "For n = 3, n^2 + 1 = 10, which is not prime.",
            "n = 3 gives 10, and 10 is composite.",
            "Checking n = 3: 9 + 1 = 10 = 2 * 5, not a prime.",
        ],
    ],
    [
        [
            "The probability of drawing a red ball first is 4/10 = 2/5.",
            "There are 4 red balls out of 10, so the first draw is red with probability 2/5.",
            "P(first red) = 4/10, which simplifies to 2/5.",
        ],
        [
            "Given the first was red, 3 red balls remain among 9, so the second is red with probability 1/3.",
            "After one red is taken, the chance the next is red is 3/9 = 1/3.",
            "Without replacement, the second red has probability 3 out of 9, i.e. 1/3.",
        ],
        [
            "Multiplying, both are red with probability 2/5 * 1/3 = 2/15.",
            "So P(both red) = (2/5)(1/3) = 2/15.",
            "The joint probability is 2/15.",
        ],
    ],
    [
        [
            "Let's compute the derivative: f'(x) = 3x^2 - 12.",
            "Differentiating, f'(x) equals 3x^2 - 12.",
            "The derivative of f is 3x^2 - 12.",
        ],
        [
            "Setting f'(x) = 0 gives x^2 = 4, so x = 2 or x = -2.",
            "Critical points: 3x^2 = 12, so x = ±2.",
            "Solving 3x^2 - 12 = 0, we find x = 2 and x = -2.",
        ],
        [
            "At x = 2, f(2) = 8 - 24 + 1 = -15, which is the local minimum.",
            "Plugging in x = 2: f(2) = -15, the minimum value.",
            "The local minimum is f(2) = 8 - 24 + 1 = -15.",
        ],
    ],
    [
        [
            "I need the remainder of 7^100 modulo 5. Powers of 7 mod 5 cycle: 2, 4, 3, 1.",
            "Mod 5, 7 is 2, and powers of 2 cycle with period 4: 2, 4, 3, 1.",
            "Working mod 5, 7^k cycles through 2, 4, 3, 1.",
        ],
        [
            "Since 100 is divisible by 4, 7^100 is 1 mod 5.",
            "100 = 4 * 25, so 7^100 leaves remainder 1.",
            "The exponent 100 is a multiple of the period 4, so the remainder is 1.",
        ],
    ],
    [
        [
            "The train travels 120 km in 2 hours, so its speed is 60 km/h.",
            "Speed = distance / time = 120 / 2 = 60 km per hour.",
            "120 km over 2 hours means 60 km/h.",
        ],
        [
            "At 60 km/h, covering the remaining 90 km takes 1.5 hours.",
            "The last 90 km at the same speed needs 90/60 = 1.5 h.",
            "So the remaining 90 km take one and a half hours.",
        ],
    ],
]


def pairs(problems: Sequence[Sequence[Sequence[str]]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(paraphrase pairs, pairs of different steps of the same problem)."""
    same, different = [], []
    for steps in problems:
        for phrasings in steps:
            same += list(itertools.combinations(phrasings, 2))
        for a, b in itertools.combinations(steps, 2):
            different += [(x, y) for x in a for y in b]
    return same, different


def distances(vectors: dict[str, np.ndarray], pairs: list[tuple[str, str]]) -> np.ndarray:
    def unit(v: np.ndarray) -> np.ndarray:
        return v / max(float(np.linalg.norm(v)), 1e-12)

    return np.array([1.0 - float(unit(vectors[a]) @ unit(vectors[b])) for a, b in pairs])


def separating_threshold(same: np.ndarray, different: np.ndarray) -> tuple[float, float]:
    """(threshold, share of pairs it classifies right, balanced): the midpoint of the gap when paraphrases are
    all closer than every different pair, else the threshold with the best balanced accuracy."""
    if same.max() < different.min():
        t = float((same.max() + different.min()) / 2)
        return t, 1.0
    best = (0.0, 0.0)
    for t in np.unique(np.concatenate([same, different])):
        acc = 0.5 * float((same <= t).mean() + (different > t).mean())
        if acc > best[1]:
            best = (float(t), acc)
    return best


def summary(d: np.ndarray) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in {"min": d.min(), "p10": np.percentile(d, 10), "median": np.median(d), "p90": np.percentile(d, 90), "max": d.max()}.items()}


def measure(name: str, vectors: dict[str, np.ndarray]) -> dict[str, Any]:
    same, different = pairs(PROBLEMS)
    ds, dd = distances(vectors, same), distances(vectors, different)
    t, acc = separating_threshold(ds, dd)
    at_ref = 0.5 * float((ds <= 0.05).mean() + (dd > 0.05).mean())
    return {
        "clusterer": name,
        "paraphrase_pairs": len(same),
        "different_step_pairs": len(different),
        "paraphrase_distance": summary(ds),
        "different_step_distance": summary(dd),
        "threshold": round(t, 3),
        "balanced_accuracy": round(acc, 3),
        "paraphrases_merged_at_0.05": round(float((ds <= 0.05).mean()), 3),
        "balanced_accuracy_at_0.05": round(at_ref, 3),
    }


def embedder_vectors(texts: list[str]) -> dict[str, np.ndarray]:
    from workers.embedder import SentenceEmbedder

    return dict(zip(texts, np.asarray(SentenceEmbedder().embed(texts))))


def lexical_vectors(texts: list[str]) -> dict[str, np.ndarray]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from verifiers.embeddings import LexicalClusterer

    lo, hi = LexicalClusterer().ngrams
    matrix = TfidfVectorizer(analyzer="char_wb", ngram_range=(lo, hi), lowercase=False).fit_transform(texts).toarray()
    return dict(zip(texts, matrix))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    texts = [t for steps in PROBLEMS for phrasings in steps for t in phrasings]
    rows = [measure("embedder (all-MiniLM-L6-v2)", embedder_vectors(texts)), measure("lexical (TF-IDF char 2-4-grams)", lexical_vectors(texts))]
    report = {"date": time.strftime("%Y-%m-%d"), "commit": commit(), "steps": len(texts), "rows": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| clusterer | paraphrases: median / p90 | different steps: p10 / median | threshold (balanced acc.) | at 0.05 |")
    print("|---|---|---|---|---|")
    for r in rows:
        p, d = r["paraphrase_distance"], r["different_step_distance"]
        print(
            f"| {r['clusterer']} | {p['median']} / {p['p90']} | {d['p10']} / {d['median']} | {r['threshold']} ({r['balanced_accuracy']}) | "
            f"{r['paraphrases_merged_at_0.05']:.0%} of paraphrases merged, balanced acc. {r['balanced_accuracy_at_0.05']} |"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
