"""Continual-learning measurements as pure functions over accuracy matrices.

R is a list of rows: R[i][j] = accuracy (in [0, 1]) on domain j after phase i, with columns in
the order the domains were trained (column j = the domain trained in phase j).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Matrix = Sequence[Sequence[float]]


def _check_square(R: Matrix) -> int:
    T = len(R)
    if T == 0 or any(len(row) < T for row in R):
        raise ValueError("R needs T rows of at least T columns (phase i x domain trained at j)")
    return T


def backward_transfer(R: Matrix) -> float:
    """BWT = 1/(T-1) * sum_{j<T-1} (R[T-1][j] - R[j][j])  (Lopez-Paz & Ranzato, 2017)."""
    T = _check_square(R)
    if T < 2:
        return 0.0
    return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def forward_transfer(R: Matrix, baseline: Sequence[float]) -> float:
    """FWT = 1/(T-1) * sum_{j>=1} (R[j-1][j] - baseline[j]): what earlier phases gave domain j."""
    T = _check_square(R)
    if len(baseline) < T:
        raise ValueError("baseline needs one accuracy per trained domain")
    if T < 2:
        return 0.0
    return sum(R[j - 1][j] - baseline[j] for j in range(1, T)) / (T - 1)


def phase_deltas(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Change of every domain's accuracy across one phase: the row D[a][.] when phase trained a."""
    return {d: after[d] - before[d] for d in after if d in before}


def sample_forgetting(before: Sequence[int], after: Sequence[int]) -> dict[str, int]:
    """Per-item transitions between two evaluations of the same items (1 = correct)."""
    if len(before) != len(after):
        raise ValueError("both evaluations must score the same items")
    forgotten = sum(1 for b, a in zip(before, after) if b and not a)
    gained = sum(1 for b, a in zip(before, after) if a and not b)
    return {"forgotten": forgotten, "gained": gained, "items": len(before)}


# ---- pairwise transfer D[a][b] ----------------------------------------------------------------
# A phase is (trained domains, steps, accuracy after it); `before` of a phase is the evaluation
# right before it (the previous phase's result, or the baseline for the first phase).
PhaseResult = tuple[Sequence[str], int, Mapping[str, float]]


def transfer_matrix(
    baseline: Mapping[str, float], phases: Sequence[PhaseResult], full_steps: int | None = None
) -> dict[str, dict[str, float]]:
    """Pairwise transfer D[a][b]: the change of b's accuracy caused by one phase on domain a.

    D[a][b] = mean over the single-domain phases p on a of (after_p[b] - before_p[b]); the
    diagonal D[a][a] is a's own gain. A domain trained several times gets the mean of its phases.
    Mixed phases (several domains at once) cannot be attributed to one domain: they enter no row
    but still move `before` forward. With `full_steps`, phases are rescaled to `full_steps`
    steps under a linear-in-steps assumption, pooling the phases of a by their steps:
        D[a][b] = full_steps * sum_p (after_p[b] - before_p[b]) / sum_p steps_p
    so a short probe phase predicts a full one; a phase with steps <= 0 counts as full.
    Rows exist only for domains trained alone at least once.
    """
    sums: dict[str, dict[str, float]] = {}
    weight: dict[str, float] = {}
    before = baseline
    for trained, steps, after in phases:
        if len(trained) == 1:
            a = trained[0]
            scale = 1.0
            if full_steps is not None:
                scale = steps / full_steps if steps > 0 else 1.0
            row = sums.setdefault(a, {})
            for b, delta in phase_deltas(before, after).items():
                row[b] = row.get(b, 0.0) + delta
            weight[a] = weight.get(a, 0.0) + scale
        before = after
    return {a: {b: v / weight[a] for b, v in row.items()} for a, row in sums.items()}


def transfer_rates(
    exposures: Sequence[Mapping[str, float]],
    deltas: Sequence[Mapping[str, float]],
    domains: Sequence[str],
    ridge: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Per-step transfer rate[a][b] fitted from mixed phases by ridge least squares.

    Each phase p trained domain a for exposures[p][a] step-equivalents (mixture weight summed
    over its steps) and moved b by deltas[p][b]; the model delta_p[b] = sum_a exposure_p[a] *
    rate[a][b] is solved per column b: rate[.][b] = (X^T X + ridge I)^-1 X^T y. The ridge term
    pulls unidentified rates (domains always mixed in the same proportions) towards 0.
    """
    if len(exposures) != len(deltas):
        raise ValueError("one exposure row per phase delta row")
    k = len(domains)
    X = [[float(e.get(a, 0.0)) for a in domains] for e in exposures]
    gram = [
        [sum(x[i] * x[j] for x in X) + (ridge if i == j else 0.0) for j in range(k)]
        for i in range(k)
    ]
    out: dict[str, dict[str, float]] = {a: {} for a in domains}
    for b in domains:
        rhs = [sum(x[i] * d.get(b, 0.0) for x, d in zip(X, deltas)) for i in range(k)]
        for a, r in zip(domains, _solve(gram, rhs)):
            out[a][b] = r
    return out


def _solve(A: list[list[float]], y: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting for the small SPD systems above."""
    n = len(y)
    M = [[*row, y[i]] for i, row in enumerate(A)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(M[r][c]))
        if abs(M[p][c]) < 1e-12:
            raise ValueError("singular system: use ridge > 0")
        M[c], M[p] = M[p], M[c]
        for r in range(c + 1, n):
            f = M[r][c] / M[c][c]
            M[r] = [v - f * w for v, w in zip(M[r], M[c])]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (M[r][n] - sum(M[r][j] * x[j] for j in range(r + 1, n))) / M[r][r]
    return x


def bwt_curve(R: Matrix) -> list[float]:
    """BWT after each phase t >= 1: backward_transfer of the first t + 1 rows of R."""
    return [backward_transfer(R[: t + 1]) for t in range(1, len(R))]


# ---- sample-wise forgetting -------------------------------------------------------------------
def chance_adjusted_forgetting(
    before: Sequence[int], after: Sequence[int], options: int
) -> dict[str, float]:
    """1->0 and 0->1 transitions net of those that guessing alone produces (k-option items).

    Model: an item is either known or answered by a uniform guess, right with g = 1/k, drawn
    afresh at each evaluation. The known fraction at accuracy p is K = clip((p - g) / (1 - g)),
    so about u = n * (1 - max(K_before, K_after)) items are unknown at both evaluations, and each
    of those flips 1->0 with probability g(1-g) and 0->1 with the same probability. Hence
        forgotten_adj = max(0, forgotten - u g (1-g)),  gained_adj = max(0, gained - u g (1-g)).
    """
    if options < 2:
        raise ValueError("a multiple-choice item needs at least 2 options")
    raw = sample_forgetting(before, after)
    n, g = raw["items"], 1.0 / options
    if n == 0:
        return {"forgotten": 0.0, "gained": 0.0, "items": 0, "by_chance": 0.0}

    def known(xs: Sequence[int]) -> float:
        return min(1.0, max(0.0, (sum(1 for x in xs if x) / n - g) / (1 - g)))

    by_chance = n * (1 - max(known(before), known(after))) * g * (1 - g)
    return {
        "forgotten": max(0.0, raw["forgotten"] - by_chance),
        "gained": max(0.0, raw["gained"] - by_chance),
        "items": n,
        "by_chance": by_chance,
    }


# ---- entropy ----------------------------------------------------------------------------------
def entropy_trend(series: Sequence[float]) -> dict[str, float | None]:
    """Trend of one domain's entropy over evaluations (baseline first, then after each phase).

    slope = least-squares slope per phase; relative_change = (last - first) / first (None when
    the first entropy is 0: a change relative to nothing is undefined). Falling entropy is the
    signature of structured RL sharpening the policy; rising entropy of open-ended training.
    """
    n = len(series)
    if n == 0:
        raise ValueError("entropy_trend needs at least one evaluation")
    mean_x, mean_y = (n - 1) / 2, sum(series) / n
    var_x = sum((i - mean_x) ** 2 for i in range(n))
    cov = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(series))
    slope = cov / var_x if var_x else 0.0
    first, last = series[0], series[-1]
    return {"slope": slope, "relative_change": (last - first) / first if first else None}
