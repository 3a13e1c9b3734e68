"""Validation metrics of a classifier, from scikit-learn so their definitions are the standard ones."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Cross-entropy loss, accuracy, macro precision/recall/F1 over the classes present in ``labels``
    (a class no image belongs to would only add a meaningless zero) and the confusion matrix (rows: true
    class). A class never predicted has precision 0, as in the original tool's weighted metrics."""
    p = probs.double().cpu().numpy().clip(1e-12)  # an underflowed softmax costs log(1e-12), as before
    p /= p.sum(1, keepdims=True)  # rows of a float32 softmax sum to 1 only within float32 rounding
    y = labels.cpu().numpy()
    pred = p.argmax(1)
    classes = np.arange(num_classes)
    present = np.unique(y)
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=present, average="macro",
                                                               zero_division=0)
    cm = confusion_matrix(y, pred, labels=classes)
    return {"loss": float(log_loss(y, p, labels=classes)),
            "acc": float(np.trace(cm) / max(cm.sum(), 1)),
            "precision": float(precision), "recall": float(recall), "f1": float(f1),
            "confusion": cm.tolist()}
