"""Evaluate a classifier on the clean view of a dataset split: top-1, top-5, NLL and ECE."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .datasets import ImageDataset
from .loader import augmented_batches, clean_batches
from .precision import Compute

ECE_BINS = 15
# With 5 classes or fewer every label is in the top 5: top-5 would read 100 % whatever the model.
TOP5_MIN_CLASSES = 6


def expected_calibration_error(confidence: Tensor, correct: Tensor, bins: int = ECE_BINS) -> float:
    """Equal-width-bin ECE: sum over bins of |accuracy - mean confidence| weighted by bin share."""
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype, device=confidence.device)
    which = torch.bucketize(confidence, edges[1:-1], right=True)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(bins):
        mask = which == b
        if mask.any():
            gap = (correct[mask].double().mean() - confidence[mask].double().mean()).abs()
            ece += gap * mask.double().mean()
    return float(ece)


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset: ImageDataset, *, device: torch.device, batch_size: int = 256,
                   workers: int = 0, compute: Compute | None = None) -> dict[str, float]:
    """Accuracy (%) and calibration of ``model`` on the clean images of ``dataset``: ``top1``,
    ``top5`` (only with ``TOP5_MIN_CLASSES`` or more classes), ``nll`` and ``ece``, with the
    forward run as ``compute`` says (default fp32); the metrics are computed in fp32.

    The model is put in eval mode for the pass and returned to its previous mode.
    """
    compute = compute or Compute()
    was_training = model.training
    model.eval()
    logits_all = []
    try:
        for _, images in augmented_batches(dataset, dataset.train_view, clean_batches(dataset, batch_size),
                                           device=device, workers=workers):
            logits_all.append(compute.forward(model, images).cpu())
    finally:
        model.train(was_training)
    logits = torch.cat(logits_all)
    labels = torch.from_numpy(dataset.labels)
    probs = logits.softmax(dim=1)
    confidence, pred = probs.max(dim=1)
    metrics = {"top1": 100.0 * float((pred == labels).double().mean())}
    if logits.shape[1] >= TOP5_MIN_CLASSES:
        top5 = logits.topk(5, dim=1).indices
        metrics["top5"] = 100.0 * float((top5 == labels[:, None]).any(dim=1).double().mean())
    metrics["nll"] = float(torch.nn.functional.cross_entropy(logits, labels))
    metrics["ece"] = expected_calibration_error(confidence, pred == labels)
    return metrics
