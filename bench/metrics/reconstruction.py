"""How close a reconstruction is to the original, for images in [0, 1]."""

from __future__ import annotations

import hashlib
import math
from typing import NamedTuple, Optional

import torch
from scipy import stats
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from bench.errors import BenchError

#: a perfect reconstruction has infinite PSNR; capping it keeps one perfect image from making a mean infinite
PSNR_CAP_DB = 100.0


def ssim_kernel_size(height: int, width: int, preferred: int = 11) -> int:
    """SSIM's usual 11x11 Gaussian window, shrunk (odd) for images smaller than it, e.g. 8x8 digits."""
    largest_odd = min(height, width) - (1 - min(height, width) % 2)
    return max(3, min(preferred, largest_odd))


#: fewer images than this per mean: the interval is wide and the mean easily moved by one image (say so)
SMALL_SAMPLE = 8


@torch.no_grad()
def per_image_metrics(reconstructed: Tensor, original: Tensor) -> dict[str, Tensor]:
    """PSNR (capped at :data:`PSNR_CAP_DB`) and SSIM of every image of (N, C, H, W) batches in [0, 1]: what
    :func:`reconstruction_metrics` averages, kept per image for intervals."""
    if reconstructed.shape != original.shape:
        raise ValueError(
            f"shapes differ: reconstructed {tuple(reconstructed.shape)} vs original {tuple(original.shape)}"
        )
    reconstructed, original = reconstructed.float().clamp(0, 1), original.float()
    psnr = peak_signal_noise_ratio(reconstructed, original, data_range=1.0, reduction="none", dim=(1, 2, 3))
    kernel = ssim_kernel_size(*original.shape[-2:])
    # torchmetrics sizes a Gaussian window from sigma alone (11 for the usual 1.5): scale sigma with the window
    ssim = structural_similarity_index_measure(
        reconstructed, original, data_range=1.0, sigma=1.5 * kernel / 11, reduction="none"
    )
    return {"psnr": psnr.clamp(max=PSNR_CAP_DB), "ssim": ssim}


def mean_interval(values, confidence: float = 0.95) -> tuple[float, Optional[float], Optional[float]]:
    """Mean of ``values`` and its two-sided Student-t interval (the images as independent draws); no interval
    (None, None) for fewer than two values. Equal values give a zero-width interval."""
    data = torch.as_tensor(values, dtype=torch.float64).flatten()
    if data.numel() == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = data.mean().item()
    if data.numel() < 2:
        return mean, None, None
    half = (
        float(stats.t.ppf(0.5 + confidence / 2, data.numel() - 1))
        * data.std(unbiased=True).item()
        / math.sqrt(data.numel())
    )
    return mean, mean - half, mean + half


def per_image_details(per_image: dict[str, Tensor], label_correct: Optional[Tensor] = None) -> dict:
    """A record's per-image details: PSNR / SSIM per image, 95% Student-t intervals of their means (read by the
    leaderboard, ``details.intervals``), the Clopper-Pearson interval of the label accuracy where labels were
    recovered (a proportion), and a warning under :data:`SMALL_SAMPLE` images. Images reconstructed by one
    optimisation (a shared batch) are correlated: the interval then treats them as independent (too narrow)."""
    from bench.metrics.membership import clopper_pearson

    details: dict = {
        "per_image": {
            "psnr": [round(v, 4) for v in per_image["psnr"].tolist()],
            "ssim": [round(v, 5) for v in per_image["ssim"].tolist()],
        }
    }
    intervals = {}
    for metric in ("psnr", "ssim"):
        _, low, high = mean_interval(per_image[metric])
        if low is not None:
            intervals[metric] = [low, high]
    if label_correct is not None:
        details["per_image"]["label_correct"] = label_correct.flatten().tolist()
        intervals["label_accuracy"] = list(clopper_pearson(int(label_correct.sum()), label_correct.numel()))
    if intervals:
        details["intervals"] = intervals
    count = per_image["psnr"].numel()
    if count < SMALL_SAMPLE:
        details["warning"] = (
            f"only {count} images: the mean PSNR moves by dB with one image; "
            f"use num_images x batch_size >= {SMALL_SAMPLE}"
        )
    return details


@torch.no_grad()
def reconstruction_metrics(
    reconstructed: Tensor, original: Tensor, per_image: Optional[dict[str, Tensor]] = None
) -> dict[str, float]:
    """MSE, mean absolute error, PSNR and SSIM between image batches in [0, 1], averaged over images.

    PSNR is computed per image (capped at :data:`PSNR_CAP_DB`) and then averaged, as the papers
    report it; SSIM uses a Gaussian window whose size adapts to small images (:func:`ssim_kernel_size`).
    """
    per_image = per_image_metrics(reconstructed, original) if per_image is None else per_image
    reconstructed, original = reconstructed.float().clamp(0, 1), original.float()
    return {
        "mse": (reconstructed - original).square().mean().item(),
        "mae": (reconstructed - original).abs().mean().item(),
        "psnr": per_image["psnr"].mean().item(),
        "ssim": per_image["ssim"].mean().item(),
    }


# ---------------------------------------------------------------------------------------------- the most exposed images
# A mean over images hides a defense that leaves half of them intact. These verdicts look at the images one by one:
# can a reconstruction be told apart from every other image an attacker might hold (identification, cf. breaching's
# image identifiability precision), how many are reconstructed well, and how good the best tenth is.

#: an image counts as reconstructed above these (PSNR in dB, SSIM): the defaults of :func:`exposure_metrics`
PSNR_THRESHOLD_DB = 20.0
SSIM_THRESHOLD = 0.5
#: distractors added to the gallery at most (from the attacker pool): enough that chance is small
GALLERY_DISTRACTORS = 1000
#: attacker images the reference network trains on at most (a few seconds on a CPU)
REFERENCE_SAMPLES = 5000
#: which way each per-image verdict means *more* privacy (merged into the reconstruction attacks' directions)
EXPOSURE_DIRECTIONS = {
    "identification_rate": "lower",
    "identification_rate_features": "lower",
    "share_psnr_above": "lower",
    "share_ssim_above": "lower",
    "psnr_top_decile": "lower",
}


@torch.no_grad()
def identification_hits(reconstructed: Tensor, gallery: Tensor, own_index: Optional[Tensor] = None) -> Tensor:
    """Whether each reconstruction's nearest neighbour (Euclidean, over flattened rows) in ``gallery`` is its own
    original, ``gallery[own_index[i]]`` (default: ``gallery[i]``, the originals first, then the distractors).

    Works on images or on feature vectors alike. A gallery smaller than the attacked set cannot hold every original.
    """
    count = len(reconstructed)
    if len(gallery) < count:
        raise BenchError(
            f"identification needs a gallery at least as large as the attacked set: {len(gallery)} < {count}"
        )
    own_index = torch.arange(count) if own_index is None else own_index.flatten().cpu()
    queries, candidates = reconstructed.float().flatten(1).cpu(), gallery.float().flatten(1).cpu()
    if queries.shape[1] != candidates.shape[1]:
        raise BenchError(f"reconstructions have {queries.shape[1]} values each, the gallery {candidates.shape[1]}")
    nearest = torch.cat([torch.cdist(chunk, candidates).argmin(dim=1) for chunk in queries.split(256)])
    return nearest == own_index


def identification_rate(hits: Tensor, gallery_size: int) -> dict[str, float]:
    """The share of reconstructions identified, its Clopper-Pearson 95% interval and the rate of a blind guess."""
    from bench.metrics.membership import clopper_pearson

    successes, trials = int(hits.sum()), hits.numel()
    low, high = clopper_pearson(successes, trials)
    return {"rate": successes / trials, "low": low, "high": high, "chance": 1 / gallery_size, "images": trials}


def share_above(values: Tensor, threshold: float, metric: str) -> float:
    """The share of images whose ``metric`` ("psnr" or "ssim") is at least ``threshold`` (checked against the
    metric's range: PSNR in [0, :data:`PSNR_CAP_DB`] dB, SSIM in [-1, 1])."""
    low, high = {"psnr": (0.0, PSNR_CAP_DB), "ssim": (-1.0, 1.0)}[metric]
    if not low <= threshold <= high:
        raise BenchError(f"a {metric.upper()} threshold must lie in [{low:g}, {high:g}], got {threshold:g}")
    return (values >= threshold).float().mean().item()


def top_decile(values: Tensor) -> float:
    """The 90th percentile: the level the best-reconstructed tenth of the images reaches."""
    return torch.quantile(values.double().flatten(), 0.9).item()


def check_thresholds(psnr_threshold: float, ssim_threshold: float) -> None:
    """One clear error for a threshold outside its metric's range, before any training."""
    share_above(torch.zeros(1), psnr_threshold, "psnr")
    share_above(torch.zeros(1), ssim_threshold, "ssim")


class ReferenceNetwork(nn.Module):
    """A small classifier trained on the attacker pool only; its penultimate layer is the feature space in which
    reconstructions are identified (the pixel space rewards blur; a classifier's features ask "same digit, same
    look?")."""

    def __init__(self, channels: int, outputs: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width * 16, outputs)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Unit-length features, so that the nearest neighbour compares directions, not brightness."""
        self.eval()
        parts = [self.features(chunk.float().cpu()) for chunk in images.split(512)]
        return nn.functional.normalize(torch.cat(parts), dim=1)


#: reference networks already trained, keyed by a digest of their training data: one per evaluation, shared by its
#: attacks (they all read the same attacker pool)
_REFERENCE_NETWORKS: dict[str, ReferenceNetwork] = {}


def reference_network(images: Tensor, labels: Tensor, epochs: int = 5, seed: int = 0) -> Optional[ReferenceNetwork]:
    """The reference network for attacker ``images`` and their ``labels`` (class indices, or 0/1 attribute vectors),
    trained once with its own seed (it draws nothing from an attack's generator, so it never moves a result);
    None for targets that are neither."""
    images, labels = images.float().cpu(), labels.cpu()
    if labels.dim() == 1 and not labels.is_floating_point():
        outputs, loss_fn = int(labels.max()) + 1, nn.functional.cross_entropy
    elif labels.dim() == 2 and ((labels == 0) | (labels == 1)).all():
        outputs, loss_fn, labels = labels.shape[1], nn.functional.binary_cross_entropy_with_logits, labels.float()
    else:
        return None
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    key = f"{digest}|{epochs}|{seed}|{tuple(images.shape)}"
    if key not in _REFERENCE_NETWORKS:
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = ReferenceNetwork(images.shape[1], outputs)
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
        with torch.enable_grad():
            for _ in range(epochs):
                for batch in torch.randperm(len(images), generator=generator).split(64):
                    optimizer.zero_grad()
                    loss_fn(network(images[batch]), labels[batch]).backward()
                    optimizer.step()
        _REFERENCE_NETWORKS.clear()  # one evaluation at a time: keep only the newest
        _REFERENCE_NETWORKS[key] = network.eval()
    return _REFERENCE_NETWORKS[key]


class ExampleImages(NamedTuple):
    """Images for a record's grid: originals over what the attack made of them, in equal groups, each with a title
    (e.g. the images nearest the mean PSNR, then the best-reconstructed), what each row of a pair shows, and where
    the reconstructions came from when the attack chose among several (e.g. the decoder that won)."""

    originals: Tensor
    reconstructions: Tensor
    groups: tuple[str, ...] = ("nearest the mean PSNR", "the best-reconstructed")
    rows: tuple[str, str] = ("original", "reconstruction")
    source: str = ""


def exposure_examples(originals: Tensor, reconstructed: Tensor, psnr: Tensor, count: int = 8) -> ExampleImages:
    """Example images for the record's grid: the ``count`` images whose PSNR is nearest the mean, then the ``count``
    best-reconstructed (the grid shows each group as a row of originals over a row of reconstructions)."""
    count = min(count, len(psnr))
    typical = (psnr - psnr.mean()).abs().argsort()[:count]
    best = psnr.argsort(descending=True)[:count]
    chosen = torch.cat([typical, best]).cpu()
    return ExampleImages(originals.detach().cpu()[chosen], reconstructed.detach().cpu()[chosen].clamp(0, 1))


@torch.no_grad()
def exposure_metrics(
    reconstructed: Tensor,
    originals: Tensor,
    distractors: Optional[Tensor] = None,
    reference: Optional[ReferenceNetwork] = None,
    per_image: Optional[dict[str, Tensor]] = None,
    psnr_threshold: float = PSNR_THRESHOLD_DB,
    ssim_threshold: float = SSIM_THRESHOLD,
) -> tuple[dict[str, float], dict]:
    """Per-image verdicts: identification rate in pixel space (and in ``reference``'s feature space) against a
    gallery of the ``originals`` plus ``distractors``, the shares of images at or above the PSNR and SSIM
    thresholds, and the top-decile PSNR. Returns (metrics, details); details hold the intervals and the gallery."""
    check_thresholds(psnr_threshold, ssim_threshold)
    per_image = per_image_metrics(reconstructed, originals) if per_image is None else per_image
    reconstructed, originals = reconstructed.detach().float().clamp(0, 1).cpu(), originals.detach().float().cpu()
    gallery = originals if distractors is None else torch.cat([originals, distractors.detach().float().cpu()])
    pixel = identification_rate(identification_hits(reconstructed, gallery), len(gallery))
    metrics = {
        "identification_rate": pixel["rate"],
        "share_psnr_above": share_above(per_image["psnr"], psnr_threshold, "psnr"),
        "share_ssim_above": share_above(per_image["ssim"], ssim_threshold, "ssim"),
        "psnr_top_decile": top_decile(per_image["psnr"]),
    }
    identification = {"pixel": pixel}
    if reference is not None:
        features = identification_rate(
            identification_hits(reference.embed(reconstructed), reference.embed(gallery)), len(gallery)
        )
        metrics["identification_rate_features"] = features["rate"]
        identification["features"] = features
    details = {
        "identification": {**identification, "gallery": len(gallery), "distractors": len(gallery) - len(originals)},
        # read by the leaderboard beside the headline's worst case (``details.intervals``)
        "intervals": {
            ("identification_rate" if space == "pixel" else "identification_rate_features"): [
                found["low"],
                found["high"],
            ]
            for space, found in identification.items()
        },
        "thresholds": {"psnr_db": psnr_threshold, "ssim": ssim_threshold},
    }
    return metrics, details


def score_reconstructions(
    reconstructed: Tensor, originals: Tensor, datamodule=None, per_image: Optional[dict[str, Tensor]] = None
) -> tuple[dict[str, float], dict, ExampleImages]:
    """What a reconstruction attack reports: the mean metrics (:func:`reconstruction_metrics`), the per-image
    verdicts (:func:`exposure_metrics`; distractors and the reference network from ``datamodule``'s attacker pool)
    and the examples (:func:`exposure_examples`). Returns (metrics, details, examples)."""
    per_image = per_image_metrics(reconstructed, originals) if per_image is None else per_image
    distractors, reference = None, None
    if datamodule is not None:
        attacker_images, attacker_labels = datamodule.pool("attacker").tensors()
        distractors = attacker_images[:GALLERY_DISTRACTORS]
        reference = reference_network(attacker_images[:REFERENCE_SAMPLES], attacker_labels[:REFERENCE_SAMPLES])
    metrics = reconstruction_metrics(reconstructed, originals, per_image)
    exposure, details = exposure_metrics(reconstructed, originals, distractors, reference, per_image)
    details["examples"] = "first row pair: the images nearest the mean PSNR; second: the best-reconstructed"
    return {**metrics, **exposure}, details, exposure_examples(originals, reconstructed, per_image["psnr"])


def worst_case(per_candidate: dict[str, dict[str, float]], directions: dict[str, str]) -> tuple[dict, dict]:
    """The defender's worst case over several attackers (e.g. decoder families): for every metric, the value of the
    attacker that learned the most (the lowest where "higher" means more privacy, the highest where "lower" does).
    Returns (metrics, winners: metric -> the attacker that gave it). Metrics without a direction are left out."""
    metrics, winners = {}, {}
    for metric, way in directions.items():
        scored = {name: values[metric] for name, values in per_candidate.items() if metric in values}
        scored = {name: value for name, value in scored.items() if not math.isnan(value)}
        if not scored:
            continue
        pick = min if way == "higher" else max
        winners[metric] = pick(scored, key=scored.get)
        metrics[metric] = scored[winners[metric]]
    return metrics, winners
