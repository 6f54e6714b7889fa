"""First layers without training (section 9.9): hand-designed filter banks and k-means on
image patches, as arrays ready to be a convolution's frozen weight ``(K, C, k, k)``.

The chapter's cheaper ways to get features: random filters, filters designed by hand (edge
detectors, Gabor functions, as in V1 models), and filters learned without labels by
clustering small patches of the images (k-means centroids). The classifier on top is then
trained alone, a convex problem when it is one softmax layer.
"""

from __future__ import annotations

import numpy as np


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column (x) and row (y) offsets from the centre of a ``size`` x ``size`` kernel."""
    c = (size - 1) / 2
    y, x = np.mgrid[:size, :size].astype(np.float64) - c
    return x, y


def oriented_edges(size: int = 5, orientations: int = 4, sigma: float = 1.0) -> np.ndarray:
    """Edge detectors: the derivative of a Gaussian along ``orientations`` directions
    ``θ = π·i / orientations``, ``-(x cos θ + y sin θ) exp(-(x² + y²) / 2σ²)``, each scaled
    to unit norm. ``x`` runs along a row, ``y`` down a column. Returns ``(orientations,
    size, size)``.

    Examples
    --------
    >>> oriented_edges(3, 2).shape
    (2, 3, 3)
    """
    x, y = _grid(size)
    bank = []
    for theta in np.pi * np.arange(orientations) / orientations:
        f = -(x * np.cos(theta) + y * np.sin(theta)) * np.exp(-(x**2 + y**2) / (2 * sigma**2))
        bank.append(f / np.linalg.norm(f))
    return np.array(bank)


def gabor(size: int = 5, orientations: int = 4, wavelength: float = 4.0, sigma: float = 1.5,
          phase: float = 0.0, aspect: float = 1.0) -> np.ndarray:
    """Gabor filters (the chapter's model of V1 simple cells)::

        g(x, y) = exp(-(x'² + aspect²·y'²) / 2σ²) · cos(2π x' / wavelength + phase)
        x' = x cos θ + y sin θ,   y' = -x sin θ + y cos θ,   θ = π·i / orientations

    Returns ``(orientations, size, size)``, unnormalised.

    Examples
    --------
    >>> float(gabor(5, 1)[0, 2, 2])  # the centre: exp(0)·cos(0)
    1.0
    """
    x, y = _grid(size)
    bank = []
    for theta in np.pi * np.arange(orientations) / orientations:
        xr = x * np.cos(theta) + y * np.sin(theta)
        yr = -x * np.sin(theta) + y * np.cos(theta)
        envelope = np.exp(-(xr**2 + aspect**2 * yr**2) / (2 * sigma**2))
        bank.append(envelope * np.cos(2 * np.pi * xr / wavelength + phase))
    return np.array(bank)


def as_weight(bank: np.ndarray, channels: int = 1) -> np.ndarray:
    """A ``(K, k, k)`` bank as a convolution weight ``(K, channels, k, k)``: each filter
    zero-mean and unit-norm, the same on every input channel."""
    f = bank - bank.mean(axis=(1, 2), keepdims=True)
    f = f / np.maximum(np.linalg.norm(f.reshape(len(f), -1), axis=1), 1e-12)[:, None, None]
    return np.repeat(f[:, None], channels, axis=1)


def patches(images: np.ndarray, size: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` random ``size`` x ``size`` patches of ``images`` ``(N, C, H, W)``, each
    flattened: ``(count, C·size·size)``."""
    n, _, h, w = images.shape
    rng = np.random.default_rng(seed)
    which = rng.integers(0, n, count)
    rows, cols = rng.integers(0, h - size + 1, count), rng.integers(0, w - size + 1, count)
    return np.stack([images[i, :, r:r + size, c:c + size].reshape(-1)
                     for i, r, c in zip(which, rows, cols)])


def kmeans(points: np.ndarray, k: int, iterations: int = 10, seed: int = 0):
    """Lloyd's k-means from a k-means++ start: ``(centres (k, D), assignment (P,))``.

    A centre left without points keeps its place.

    Examples
    --------
    >>> pts = np.array([[0.0, 0], [0, 1], [10, 0], [10, 1]])
    >>> centres, which = kmeans(pts, 2)
    >>> sorted(centres[:, 0].tolist()), bool(which[0] == which[1] != which[2] == which[3])
    ([0.0, 10.0], True)
    """
    points = np.asarray(points, np.float64)
    rng = np.random.default_rng(seed)
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):  # k-means++: far points are likelier next centres
        d2 = np.min([((points - c) ** 2).sum(axis=1) for c in centres], axis=0)
        centres.append(points[rng.choice(len(points), p=d2 / d2.sum())])
    centres = np.array(centres)
    for _ in range(iterations):
        which = _nearest(points, centres)
        for j in range(k):
            if np.any(which == j):
                centres[j] = points[which == j].mean(axis=0)
    return centres, _nearest(points, centres)


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d2 = (points**2).sum(1)[:, None] - 2 * points @ centres.T + (centres**2).sum(1)[None]
    return d2.argmin(axis=1)


def kmeans_filters(images: np.ndarray, channels: int, size: int, count: int = 10000,
                   iterations: int = 10, seed: int = 0) -> np.ndarray:
    """Filters learned without labels: k-means centroids of ``count`` patches of ``images``
    ``(N, C, H, W)``, each patch brightness- and contrast-normalised first (mean removed,
    divided by its standard deviation). Returns ``(channels, C, size, size)``, unit norm."""
    p = patches(images, size, count, seed)
    p = p - p.mean(axis=1, keepdims=True)
    p = p / np.sqrt(p.var(axis=1, keepdims=True) + 0.01)
    centres, _ = kmeans(p, channels, iterations, seed)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return centres.reshape(channels, images.shape[1], size, size)
