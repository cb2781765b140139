"""Linear probes of frozen snippet features: do they separate action from background, and the classes?

Reads the feature cache that the ``head`` stage wrote (``RUN/features/{training,validation}``: (C, L) per video with
its annotations). A snippet is foreground when its centre, in seconds, lies inside a ground-truth segment.
- ``fg_auc``: a logistic-regression probe (L2 1e-2, standardised features) is trained on the training snippets and
  scored on the validation snippets, as ROC AUC. 0.5 means the features carry no actionness.
- ``class_acc``: nearest class mean on the mean feature of each ground-truth segment, training → validation.
"""
import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from scipy.stats import rankdata

from lofi.engine.feature_cache import FeatureCache


def inside(meta: dict, num_snippets: int) -> List[np.ndarray]:
    """Per annotated segment, (L,) bool: snippet l's centre ((l + 0.5) / L · duration, seconds) lies in it."""
    centres = (np.arange(num_snippets) + 0.5) / num_snippets * float(meta["duration"])
    return [(centres >= a["segment"][0]) & (centres < a["segment"][1]) for a in meta.get("annotations", [])]


def foreground(meta: dict, num_snippets: int) -> np.ndarray:
    """(L,) 1.0 where the snippet's centre lies inside any annotated segment."""
    return np.any(inside(meta, num_snippets) or [np.zeros(num_snippets, bool)], axis=0).astype(float)


def load_subset(run_dir: Path, subset: str) -> Tuple[np.ndarray, np.ndarray, List[Tuple[np.ndarray, str]]]:
    """Snippet features (N, C), foreground labels (N,) and per-segment mean features with their labels."""
    folder = Path(run_dir) / "features" / subset
    index = folder / "index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{folder}: no feature cache (run the head stage first)")
    entries = FeatureCache(folder, json.loads(index.read_text())["key"]).load()
    feats, labels, segments = [], [], []
    for _, (x, meta) in sorted(entries.items()):
        x = x.float().numpy().T  # (L, C)
        masks = inside(meta, len(x))
        segments += [(x[m].mean(0), a["label"]) for m, a in zip(masks, meta["annotations"]) if m.any()]
        feats.append(x)
        labels.append(foreground(meta, len(x)))
    return np.concatenate(feats), np.concatenate(labels), segments


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula; ties share their mean rank."""
    pos = labels == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if not n1 or not n0:
        raise ValueError("roc_auc needs both foreground and background snippets")
    return float((rankdata(scores)[pos].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def logistic_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, l2: float = 1e-2,
                   seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Scores (logits without bias) of the training and validation snippets under an L2-regularised logistic regression
    fitted on standardised training features."""
    torch.manual_seed(seed)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.tensor((x_train - mean) / std, dtype=torch.float64)
    xv = torch.tensor((x_val - mean) / std, dtype=torch.float64)
    yt = torch.tensor(y_train, dtype=torch.float64)
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (xt @ w).numpy(), (xv @ w).numpy()


def nearest_class_mean(train: List[Tuple[np.ndarray, str]], val: List[Tuple[np.ndarray, str]]) -> float:
    """Accuracy of assigning each validation segment the class whose mean training feature is nearest (standardised)."""
    x = np.stack([f for f, _ in train])
    mean, std = x.mean(0), x.std(0) + 1e-6
    classes = sorted({c for _, c in train})
    centres = np.stack([np.mean([(f - mean) / std for f, c in train if c == k], 0) for k in classes])
    hits = [classes[int(np.argmin(((centres - (f - mean) / std) ** 2).sum(1)))] == c for f, c in val]
    return float(np.mean(hits))


def probe_run(run_dir: Path) -> Dict[str, float]:
    xt, yt, st = load_subset(run_dir, "training")
    xv, yv, sv = load_subset(run_dir, "validation")
    train_scores, val_scores = logistic_probe(xt, yt, xv)
    return {"fg_auc_train": roc_auc(train_scores, yt), "fg_auc": roc_auc(val_scores, yv),
            "fg_fraction": float(yv.mean()), "class_acc": nearest_class_mean(st, sv),
            "class_chance": 1.0 / len({c for _, c in st}), "segments": len(sv)}
