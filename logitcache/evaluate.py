"""Evaluate a classifier on the clean view of a dataset split: top-1, top-5, NLL and ECE."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .datasets import ImageDataset
from .loader import augmented_batches, clean_batches

ECE_BINS = 15


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
                   workers: int = 0) -> dict[str, float]:
    """Accuracy (%) and calibration of ``model`` on the clean images of ``dataset``.

    The model is put in eval mode for the pass and returned to its previous mode.
    """
    was_training = model.training
    model.eval()
    logits_all = []
    try:
        for _, images in augmented_batches(dataset, dataset.train_view, clean_batches(dataset, batch_size),
                                           device=device, workers=workers):
            logits_all.append(model(images).float().cpu())
    finally:
        model.train(was_training)
    logits = torch.cat(logits_all)
    labels = torch.from_numpy(dataset.labels)
    probs = logits.softmax(dim=1)
    confidence, pred = probs.max(dim=1)
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return {
        "top1": 100.0 * float((pred == labels).double().mean()),
        "top5": 100.0 * float((top5 == labels[:, None]).any(dim=1).double().mean()),
        "nll": float(torch.nn.functional.cross_entropy(logits, labels)),
        "ece": expected_calibration_error(confidence, pred == labels),
    }
