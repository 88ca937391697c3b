"""Which unlabeled images to label next: the selection rules, on embeddings (numpy, CPU, seeded).

Cold start (no or few labels): :func:`typiclust` (Hacohen, Dekel & Weinshall, ICML 2022) and
:func:`probcover` (Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022) pick typical, diverse images from a
self-supervised embedding. Later rounds: the teacher's :func:`uncertainty` combined with diversity —
:func:`weighted_kmeanspp` (k-means++ seeding over uncertainty-weighted points, as BADGE's seeding, Ash et
al. 2020) or :func:`kcenter_greedy` (the core-set greedy of Sener & Savarese 2018 over the most uncertain
images). Every rule skips near-duplicates of labeled (and already chosen) images: see
:func:`duplicate_radius`.

All functions take L2-normalised embeddings ``emb`` (N×D) of every image in the pool, the indices
``labeled`` (rows of ``emb`` whose labels are known) and ``candidates`` (rows that may be chosen), and return
``(chosen, score, cluster)``: row indices in choice order, the rule's score of each, and its cluster (−1
where the rule has none).
"""

from __future__ import annotations

import numpy as np
import torch

#: TypiClust's constants (the official code): clusters of at most this many images are skipped, at most
#: this many clusters, this many neighbours for the typicality
MIN_CLUSTER_SIZE = 5
MAX_CLUSTERS = 500
TYPICALITY_K = 20
#: ProbCover's purity threshold α: δ is the largest ball radius for which ≥ α of the balls are pure
PURITY = 0.95

Selection = tuple[np.ndarray, np.ndarray, np.ndarray]


def normalize(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32): distances on the sphere, as the papers' SimCLR features."""
    emb = np.asarray(emb, dtype=np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _cdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _min_dist(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each row of ``a``, the distance to its nearest row of ``b`` (inf when ``b`` is empty)."""
    if len(b) == 0:
        return np.full(len(a), np.inf, dtype=np.float32)
    tb = torch.from_numpy(b)
    return np.concatenate([torch.cdist(torch.from_numpy(a[i:i + chunk]), tb).min(1).values.numpy()
                           for i in range(0, len(a), chunk)]) if len(a) else np.zeros(0, np.float32)


def duplicate_radius(emb: np.ndarray, seed: int = 0, fraction: float = 0.1, sample: int = 2000) -> float:
    """The distance under which two images count as near-duplicates: ``fraction`` of the median distance
    from an image to its nearest other image (a seeded sample of at most ``sample`` images). Relative to
    the embedding's own scale, so it suits any encoder; exact duplicates (distance 0) always fall under it."""
    n = len(emb)
    if n < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    d = _cdist(emb[rows], emb)
    d[np.arange(len(rows)), rows] = np.inf  # not itself
    return float(fraction * np.median(d.min(1)))


def _allowed(emb: np.ndarray, labeled: np.ndarray, candidates: np.ndarray, radius: float) -> np.ndarray:
    """``candidates`` that are not near-duplicates (closer than ``radius``) of a labeled image."""
    if len(labeled) == 0 or len(candidates) == 0:
        return candidates
    return candidates[_min_dist(emb[candidates], emb[labeled]) > radius]


def _kmeans(emb: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster ids from scikit-learn's k-means (MiniBatchKMeans beyond 50 clusters or 50,000 images, as
    the official TypiClust code, to keep large pools fast)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    k = max(1, min(k, len(emb)))
    if k <= 50 and len(emb) <= 50_000:
        km = KMeans(n_clusters=k, n_init=3, random_state=seed)
    else:
        km = MiniBatchKMeans(n_clusters=k, batch_size=min(5000, len(emb)), n_init=3, random_state=seed)
    return km.fit_predict(emb).astype(np.int64)


def typicality(points: np.ndarray, k: int = TYPICALITY_K) -> np.ndarray:
    """TypiClust's typicality (Hacohen et al. 2022, Eq. 4): Typicality(x) = (1/K · Σ_{x_i ∈ K-NN(x)}
    ‖x − x_i‖₂)⁻¹, with K = min(``k``, half the points), as the official code does for small clusters."""
    n = len(points)
    if n == 1:
        return np.ones(1, dtype=np.float32)
    k = max(1, min(k, n // 2, n - 1))
    d = _cdist(points, points)
    np.fill_diagonal(d, np.inf)
    nearest = np.sort(d, axis=1)[:, :k]
    return 1.0 / (nearest.mean(1) + 1e-5)


def typiclust(emb: np.ndarray, labeled: np.ndarray, candidates: np.ndarray, budget: int, seed: int = 0,
              radius: float = 0.0) -> Selection:
    """TypiClust (Hacohen et al., ICML 2022, Alg. 1): cluster every image (labeled and not) with k-means
    into |L| + B clusters (at most 500); visit the clusters that hold the fewest labeled images first,
    larger ones first among equals, skipping clusters of ≤ 5 images; from each, take its most typical
    unlabeled image (:func:`typicality` within the cluster). With more picks than such clusters it cycles
    through them again, as the official code does."""
    pool = np.union1d(labeled, candidates)
    clusters = np.full(len(emb), -1, dtype=np.int64)
    clusters[pool] = _kmeans(emb[pool], min(len(labeled) + budget, MAX_CLUSTERS), seed)
    allowed = np.zeros(len(emb), dtype=bool)
    allowed[_allowed(emb, labeled, candidates, radius)] = True
    ids, sizes = np.unique(clusters[pool], return_counts=True)
    covered = np.bincount(clusters[labeled], minlength=ids.max() + 1)[ids] if len(labeled) else np.zeros_like(ids)
    order = np.lexsort((-sizes, covered))  # fewest labeled first, then the largest
    big = order[sizes[order] > MIN_CLUSTER_SIZE]
    order = big if len(big) else order  # a tiny pool: every cluster is small, use them all
    chosen: list[int] = []
    scores: list[float] = []
    exhausted: set[int] = set()
    i = 0
    while len(chosen) < budget and len(exhausted) < len(order):
        c = int(ids[order[i % len(order)]])
        i += 1
        if c in exhausted:
            continue
        members = pool[clusters[pool] == c]
        free = members[allowed[members]]
        if len(free) == 0:
            exhausted.add(c)
            continue
        # typicality among the cluster's images still unlabeled (the official code drops labeled ones)
        typ = typicality(emb[free])
        for j in np.argsort(-typ, kind="stable"):
            x = int(free[j])
            if not chosen or _min_dist(emb[[x]], emb[chosen])[0] > radius:
                chosen.append(x)
                scores.append(float(typ[j]))
                allowed[x] = False
                break
            allowed[x] = False  # a near-duplicate of an image already chosen: never offer it
        else:
            exhausted.add(c)
    chosen_a = np.array(chosen, dtype=np.int64)
    scores_a, clusters_a = np.array(scores, dtype=np.float32), clusters[chosen_a]
    if len(chosen) < budget and allowed.any():  # the large clusters ran dry: spread the rest out
        more, _, _ = kcenter_greedy(emb, np.concatenate([labeled, chosen_a]), np.nonzero(allowed)[0],
                                    budget - len(chosen), radius=radius)
        chosen_a = np.concatenate([chosen_a, more])
        scores_a = np.concatenate([scores_a, np.zeros(len(more), np.float32)])
        clusters_a = np.concatenate([clusters_a, clusters[more]])
    return chosen_a, scores_a, clusters_a


def probcover_delta(emb: np.ndarray, num_classes: int, seed: int = 0, alpha: float = PURITY,
                    chunk: int = 1024) -> float:
    """ProbCover's ball radius δ (Yehuda et al. 2022, Sec. 4.1): cluster the embedding with k-means into as
    many clusters as classes; a ball B_δ(x) is pure when every point in it shares x's cluster; take the
    largest δ for which a share ≥ α of the balls are pure. A ball is pure iff δ is below the distance from
    x to the nearest point of another cluster, so δ is the (1 − α)-quantile of those distances (exact, no
    search over δ)."""
    clusters = _kmeans(emb, max(2, num_classes), seed)
    other = np.empty(len(emb), dtype=np.float32)
    t_all = torch.from_numpy(emb)
    t_cl = torch.from_numpy(clusters)
    for i in range(0, len(emb), chunk):
        d = torch.cdist(t_all[i:i + chunk], t_all)
        d[t_cl[i:i + chunk, None] == t_cl[None, :]] = float("inf")
        other[i:i + chunk] = d.min(1).values.numpy()
    finite = other[np.isfinite(other)]
    # "lower": a radius that is itself a distance, so the balls of a share ≥ α stay pure (ties included)
    return float(np.quantile(finite, 1 - alpha, method="lower")) if len(finite) else 0.0


def probcover(emb: np.ndarray, labeled: np.ndarray, candidates: np.ndarray, budget: int, delta: float,
              radius: float = 0.0, chunk: int = 1024) -> Selection:
    """ProbCover (Yehuda et al., NeurIPS 2022, Alg. 1): on the graph with an edge x → y whenever
    ‖x − y‖ < δ, greedily pick the unlabeled image whose ball covers the most points not yet covered
    (labeled images cover their balls from the start), then drop the edges into the newly covered points.
    Once everything is covered (no pick adds coverage) the rest of the budget goes farthest-first
    (:func:`kcenter_greedy`), so the picks stay diverse. Score: the points a pick newly covered."""
    from scipy import sparse

    n = len(emb)
    t_all = torch.from_numpy(emb)
    rows, cols = [], []
    for i in range(0, n, chunk):
        r, c = torch.nonzero(torch.cdist(t_all[i:i + chunk], t_all) < delta, as_tuple=True)
        rows.append(r.numpy() + i)
        cols.append(c.numpy())
    graph = sparse.csr_matrix((np.ones(sum(len(r) for r in rows), dtype=np.float32),
                               (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    covered = np.zeros(n, dtype=bool)
    if len(labeled):
        covered[graph[labeled].indices] = True
    allowed = np.zeros(n, dtype=bool)
    allowed[_allowed(emb, labeled, candidates, radius)] = True
    chosen: list[int] = []
    scores: list[float] = []
    while len(chosen) < budget and allowed.any():
        gain = graph @ (~covered).astype(np.float32)  # out-degree into uncovered points
        gain[~allowed] = -1
        x = int(np.argmax(gain))  # ties: the lowest index, so the choice is deterministic
        if gain[x] <= 0:
            break
        allowed[x] = False
        if chosen and _min_dist(emb[[x]], emb[chosen])[0] <= radius:
            continue
        chosen.append(x)
        scores.append(float(gain[x]))
        covered[graph[x].indices] = True
    if len(chosen) < budget:  # full coverage: diversity for the rest
        more, _, _ = kcenter_greedy(emb, np.concatenate([labeled, chosen]).astype(np.int64),
                                    np.nonzero(allowed)[0], budget - len(chosen), radius=radius)
        chosen += more.tolist()
        scores += [0.0] * len(more)
    chosen_a = np.array(chosen, dtype=np.int64)
    return chosen_a, np.array(scores, dtype=np.float32), np.full(len(chosen_a), -1, dtype=np.int64)


def uncertainty(probs: np.ndarray, kind: str = "margin") -> np.ndarray:
    """The teacher's uncertainty per image, in [0, 1]: ``margin`` = 1 − (p₍₁₎ − p₍₂₎), one minus the gap
    between the two most likely classes (Scheffer et al. 2001); ``entropy`` = −Σ p log p / log K."""
    probs = np.asarray(probs, dtype=np.float64)
    if kind == "margin":
        top = np.sort(probs, axis=1)[:, ::-1]
        second = top[:, 1] if probs.shape[1] > 1 else 0.0
        return (1.0 - (top[:, 0] - second)).astype(np.float32)
    if kind == "entropy":
        ent = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1)
        return (ent / np.log(max(probs.shape[1], 2))).astype(np.float32)
    raise ValueError(f"unknown uncertainty '{kind}'")


def multilabel_uncertainty(probs: np.ndarray, kind: str = "margin") -> np.ndarray:
    """A multi-label teacher's uncertainty per image, in [0, 1]: each class is
    a yes/no question, ``margin`` = 1 − |2p − 1| (1 − the gap between 'yes' and 'no') and ``entropy`` = the
    binary entropy in bits; an image is as uncertain as its most uncertain class (an image whose every class is
    settled but one still needs a person for that one)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    if kind == "margin":
        per_class = 1.0 - np.abs(2 * p - 1)
    elif kind == "entropy":
        per_class = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    else:
        raise ValueError(f"unknown uncertainty '{kind}'")
    return per_class.max(1).astype(np.float32)


def weighted_kmeanspp(emb: np.ndarray, labeled: np.ndarray, candidates: np.ndarray, budget: int,
                      weights: np.ndarray, seed: int = 0, radius: float = 0.0) -> Selection:
    """k-means++ seeding over uncertainty-weighted points (Arthur & Vassilvitskii 2007; weighted as in
    BADGE's uncertainty-scaled embeddings, Ash et al. 2020): each next image is drawn with probability
    ∝ w(x) · D(x)², D the distance to the nearest labeled or chosen image, so uncertain images far from
    everything labeled are likely and near-duplicates (D ≈ 0) never are. Seeded: the same seed gives the
    same images."""
    rng = np.random.default_rng(seed)
    pool = _allowed(emb, labeled, candidates, radius)
    w = np.asarray(weights, dtype=np.float64)[pool]
    dist = _min_dist(emb[pool], emb[labeled]).astype(np.float64) if len(labeled) else np.ones(len(pool))
    alive = np.ones(len(pool), dtype=bool)
    chosen: list[int] = []
    scores: list[float] = []
    while len(chosen) < budget and alive.any():
        p = np.where(alive & (dist > radius), w * dist ** 2, 0.0)
        if p.sum() <= 0:  # every weight is 0 (a certain teacher) or all is covered: fall back to distance
            p = np.where(alive & (dist > radius), dist ** 2, 0.0)
            if p.sum() <= 0:
                break
        j = int(rng.choice(len(pool), p=p / p.sum()))
        alive[j] = False
        chosen.append(int(pool[j]))
        scores.append(float(w[j]))
        dist = np.minimum(dist, _min_dist(emb[pool], emb[[pool[j]]]))
    chosen_a = np.array(chosen, dtype=np.int64)
    return chosen_a, np.array(scores, dtype=np.float32), np.full(len(chosen_a), -1, dtype=np.int64)


def kcenter_greedy(emb: np.ndarray, labeled: np.ndarray, candidates: np.ndarray, budget: int,
                   weights: np.ndarray | None = None, top: int | None = None, radius: float = 0.0) -> Selection:
    """k-center greedy (Sener & Savarese, ICLR 2018, Alg. 1): repeatedly take the candidate farthest from
    every labeled and chosen image. With ``weights`` (uncertainty) the candidates are first cut to the
    ``top`` most uncertain (default 10 × budget), so the picks are uncertain *and* spread out. Score: the
    distance at which each was picked."""
    pool = _allowed(emb, labeled, candidates, radius)
    if weights is not None:
        top = top or 10 * budget
        w = np.asarray(weights)[pool]
        pool = np.sort(pool[np.argsort(-w, kind="stable")[:top]])
    dist = _min_dist(emb[pool], emb[labeled]).astype(np.float64) if len(labeled) else np.full(len(pool), np.inf)
    chosen: list[int] = []
    scores: list[float] = []
    alive = np.ones(len(pool), dtype=bool)
    while len(chosen) < budget and alive.any():
        d = np.where(alive, dist, -1.0)
        if not np.isfinite(d).all():  # nothing labeled yet: start from the most uncertain (or the first)
            j = int(np.argmax(np.asarray(weights)[pool] * alive)) if weights is not None else int(np.argmax(alive))
        else:
            j = int(np.argmax(d))
        if d[j] <= radius:  # everything left is a near-duplicate of something labeled or chosen
            break
        alive[j] = False
        chosen.append(int(pool[j]))
        scores.append(float(min(d[j], 1e9)))
        dist = np.minimum(dist, _min_dist(emb[pool], emb[[pool[j]]]))
    chosen_a = np.array(chosen, dtype=np.int64)
    return chosen_a, np.array(scores, dtype=np.float32), np.full(len(chosen_a), -1, dtype=np.int64)


def random_choice(labeled: np.ndarray, candidates: np.ndarray, budget: int, seed: int = 0) -> Selection:
    """Uniformly random unlabeled images (seeded): the baseline every rule is measured against."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(candidates, size=min(budget, len(candidates)), replace=False).astype(np.int64)
    return chosen, np.zeros(len(chosen), np.float32), np.full(len(chosen), -1, dtype=np.int64)
