"""Speaker clustering of the offline diarization pipeline: agglomerative clustering of the
(chunk, local speaker) CAM++ embeddings into global speakers, honouring a requested speaker
count, then every (chunk, local speaker) assigned to its nearest cluster centroid.

The algorithm is pyannote's ``AgglomerativeClustering`` (the one ``SpeakerDiarization`` runs
with ``clustering="AgglomerativeClustering"``, unconstrained assignment), re-implemented without
pyannote.audio on the same scipy calls, so the clusters are the same:

1. Embeddings kept for clustering: not NaN, and the local speaker talks alone for at least
   20 % of its chunk's frames.
2. Average-linkage (or another scipy method) dendrogram on cosine distances, cut at
   ``threshold``; clusters smaller than ``min_cluster_size`` (lowered to 10 % of the kept
   embeddings on short files) are "small".
3. When the number of large clusters misses the requested bounds, the dendrogram is cut at the
   merge step whose number of large clusters is nearest the target, searching outwards from
   the threshold.
4. Small clusters join the large cluster with the nearest centroid (cosine); then each
   (chunk, local speaker), kept or not, goes to the cluster with the nearest centroid.

scipy's cluster and spatial modules are imported at the first clustering (or by
``import_scipy``), not with this module: building the pipeline does not need them, and they take
~0.3 s to import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger("diarization")

MIN_ACTIVE_RATIO = 0.2
"""Least share of its chunk's frames a local speaker must talk alone in for its embedding to
build clusters (pyannote's ``min_active_ratio``)."""


def import_scipy() -> None:
    """Import the scipy modules clustering uses now (a warm-up), not in the first run that clusters."""
    import scipy.cluster.hierarchy  # noqa: F401
    import scipy.spatial.distance  # noqa: F401


@dataclass(frozen=True)
class ClusteringParameters:
    """method: scipy linkage method; threshold: cosine distance at which the dendrogram is cut;
    min_cluster_size: fewer (chunk, local speaker) embeddings make a small cluster."""

    method: str = "average"
    threshold: float = 0.375
    min_cluster_size: int = 6


@dataclass
class Clusters:
    """hard: (chunks, local speakers) cluster of each local speaker (int);
    centroids: (clusters, dimension) mean of the kept embeddings of each cluster."""

    hard: np.ndarray
    centroids: np.ndarray


def cluster_bounds(num_embeddings: int, num_clusters: int | None, min_clusters: int | None,
                   max_clusters: float | None) -> tuple[int | None, int, int]:
    """(exact count or None, least, most) clusters, within [1, num_embeddings]; ``num_clusters``
    overrides the bounds, and equal bounds make an exact count. ValueError when least > most."""
    least = max(1, min(num_embeddings, num_clusters or min_clusters or 1))
    # max_clusters may be math.inf (no bound): min() then gives num_embeddings, an int.
    most = int(max(1, min(num_embeddings, num_clusters or max_clusters or num_embeddings)))
    if least > most:
        raise ValueError(f"min_clusters must be smaller than (or equal to) max_clusters "
                         f"(here: min_clusters={least:g} and max_clusters={most:g}).")
    return (least if least == most else num_clusters), least, most


def training_rows(embeddings: np.ndarray, binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chunk, local speaker) indices of the embeddings that build clusters: not NaN, and the
    local speaker alone for at least ``MIN_ACTIVE_RATIO`` of the chunk's frames.

    embeddings: (chunks, local speakers, dimension); binary: (chunks, frames, local speakers) 0/1.
    """
    num_frames = binary.shape[1]
    alone = np.sum(binary, axis=2, keepdims=True) == 1
    clean_frames = np.sum(binary * alone, axis=1)  # (chunks, local speakers)
    active = clean_frames >= MIN_ACTIVE_RATIO * num_frames
    valid = ~np.any(np.isnan(embeddings), axis=2)
    chunk_index, speaker_index = np.where(active * valid)
    return chunk_index, speaker_index


def _large_clusters(clusters: np.ndarray, min_cluster_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster ids, their sizes, the ids of the large ones)."""
    ids, sizes = np.unique(clusters, return_counts=True)
    return ids, sizes, ids[sizes >= min_cluster_size]


def agglomerate(embeddings: np.ndarray, parameters: ClusteringParameters, min_clusters: int, max_clusters: int,
                num_clusters: int | None) -> np.ndarray:
    """Cluster of each embedding (0-based), for (embeddings, dimension) kept embeddings."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import cdist

    count = embeddings.shape[0]
    # On short files, fewer embeddings than min_cluster_size per speaker exist at all.
    min_size = min(parameters.min_cluster_size, max(1, round(0.1 * count)))
    if count == 1:
        return np.zeros((1,), dtype=np.uint8)
    if parameters.method in ("centroid", "median", "ward"):
        # These need euclidean distances: on unit vectors they order pairs as cosine does.
        with np.errstate(divide="ignore", invalid="ignore"):
            embeddings = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
        dendrogram = linkage(embeddings, method=parameters.method, metric="euclidean")
    else:
        dendrogram = linkage(embeddings, method=parameters.method, metric="cosine")
    clusters = fcluster(dendrogram, parameters.threshold, criterion="distance") - 1
    ids, sizes, large = _large_clusters(clusters, min_size)

    if len(large) < min_clusters:
        num_clusters = min_clusters
    elif len(large) > max_clusters:
        num_clusters = max_clusters
    if num_clusters is not None and len(large) != num_clusters:
        clusters, ids, sizes, large = _cut_for_count(dendrogram, parameters.threshold, num_clusters, min_size,
                                                     (clusters, ids, sizes, large))

    if len(large) == 0:
        clusters[:] = 0
        return clusters
    small = ids[sizes < min_size]
    if len(small) == 0:
        return clusters
    # Each small cluster joins the large one whose centroid is nearest to its own.
    large_centroids = np.vstack([np.mean(embeddings[clusters == k], axis=0) for k in large])
    small_centroids = np.vstack([np.mean(embeddings[clusters == k], axis=0) for k in small])
    nearest = np.argmin(cdist(large_centroids, small_centroids, metric="cosine"), axis=0)
    for small_index, large_index in enumerate(nearest):
        clusters[clusters == small[small_index]] = large[large_index]
    _, renumbered = np.unique(clusters, return_inverse=True)
    return renumbered


def _cut_for_count(dendrogram: np.ndarray, threshold: float, target: int, min_size: int,
                   at_threshold: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clusters of the dendrogram cut after the merge step whose number of large clusters is
    nearest ``target``: steps are tried by how close their merge distance is to ``threshold``,
    skipping merges that cannot make a large cluster, until one gives exactly ``target``
    (else the nearest seen, from a first guess of one cluster). Returns (clusters, ids, sizes,
    large ids); ``at_threshold`` (the cut at the threshold) stands until a step is tried.
    When the first guess (one cluster) is the target and no step gives it, the last step
    tried stands, as in pyannote."""
    from scipy.cluster.hierarchy import fcluster

    count = dendrogram.shape[0] + 1
    by_step = np.copy(dendrogram)
    by_step[:, 2] = np.arange(count - 1)  # cut by merge index instead of by distance
    best_step, best_large = count - 1, 1
    clusters, ids, sizes, large = at_threshold
    for step in np.argsort(np.abs(dendrogram[:, 2] - threshold)):
        if by_step[step, 3] < min_size:
            continue
        clusters = fcluster(by_step, step, criterion="distance") - 1
        ids, sizes, large = _large_clusters(clusters, min_size)
        if abs(len(large) - target) < abs(best_large - target):
            best_step, best_large = step, len(large)
        if len(large) == target:
            break
    if best_large != target:
        clusters = fcluster(by_step, best_step, criterion="distance") - 1
        ids, sizes, large = _large_clusters(clusters, min_size)
        logger.info("clustering found only %d clusters of %d requested (min_cluster_size %d)", len(large), target,
                    min_size)
    return clusters, ids, sizes, large


def assign(embeddings: np.ndarray, chunk_index: np.ndarray, speaker_index: np.ndarray,
           train_clusters: np.ndarray) -> Clusters:
    """Every (chunk, local speaker) to the cluster with the nearest centroid (cosine), the
    centroids being the means of the kept embeddings of each cluster. A NaN embedding gets
    cluster 0 (numpy's argmax of NaN), as in pyannote."""
    from scipy.spatial.distance import cdist

    num_clusters = int(np.max(train_clusters)) + 1
    num_chunks, num_speakers, dimension = embeddings.shape
    kept = embeddings[chunk_index, speaker_index]
    centroids = np.vstack([np.mean(kept[train_clusters == k], axis=0) for k in range(num_clusters)])
    distances = cdist(embeddings.reshape(num_chunks * num_speakers, dimension), centroids, metric="cosine")
    similarity = 2 - distances.reshape(num_chunks, num_speakers, num_clusters)
    return Clusters(np.argmax(similarity, axis=2), centroids)


def cluster_embeddings(embeddings: np.ndarray, binary: np.ndarray, parameters: ClusteringParameters,
                       num_clusters: int | None = None, min_clusters: int | None = None,
                       max_clusters: float | None = None) -> Clusters:
    """Global speaker of each (chunk, local speaker) and the speakers' centroids.

    embeddings: (chunks, local speakers, dimension), NaN rows for local speakers without one.
    binary: (chunks, frames, local speakers) 0/1 segmentation.
    num_clusters / min_clusters / max_clusters: the requested speaker count or bounds.
    """
    chunk_index, speaker_index = training_rows(embeddings, binary)
    kept = embeddings[chunk_index, speaker_index]
    num_clusters, min_clusters, max_clusters = cluster_bounds(len(kept), num_clusters, min_clusters, max_clusters)
    if max_clusters < 2:
        # One speaker: nothing to cluster (its centroid is NaN when no embedding was kept).
        num_chunks, num_speakers, dimension = embeddings.shape
        centroid = np.mean(kept, axis=0, keepdims=True) if len(kept) else np.full((1, dimension), np.nan, kept.dtype)
        return Clusters(np.zeros((num_chunks, num_speakers), dtype=np.int8), centroid)
    train_clusters = agglomerate(kept, parameters, min_clusters, max_clusters, num_clusters)
    return assign(embeddings, chunk_index, speaker_index, train_clusters)


def clustering_parameters(values: dict[str, Any]) -> ClusteringParameters:
    """``ClusteringParameters`` from a dict with ``method``, ``threshold``, ``min_cluster_size``."""
    return ClusteringParameters(str(values["method"]), float(values["threshold"]), int(values["min_cluster_size"]))
