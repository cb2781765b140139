"""GCNeXt block (G-TAD): a temporal branch plus a semantic branch over a dynamic kNN graph in feature space."""
import torch
from torch import nn


def knn_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """x (B, C, T) → indices (B, T, k) of each snippet's k nearest snippets (squared L2), the snippet itself included.

    Recomputed from the input on every call (dynamic graph); indices carry no gradient.
    """
    with torch.no_grad():
        xf = x.float()
        inner = torch.matmul(xf.transpose(1, 2), xf)  # (B, T, T)
        sq = (xf * xf).sum(1)  # (B, T)
        neg_dist = 2 * inner - sq.unsqueeze(2) - sq.unsqueeze(1)
        return neg_dist.topk(min(k, x.shape[-1]), dim=-1).indices


def gather_neighbours(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, C, T), idx (B, T, k) → neighbour features (B, C, T, k)."""
    b, c, t = x.shape
    k = idx.shape[-1]
    flat = idx.reshape(b, 1, t * k).expand(b, c, t * k)
    return x.gather(2, flat).view(b, c, t, k)


def knn_context(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """SGAlign's context source: the mean of each snippet's k nearest neighbours' features, (B, C, T) → (B, C, T)."""
    return gather_neighbours(x, knn_indices(x, k)).mean(-1)


class GCNeXt(nn.Module):
    """(B, C, T) → (B, C, T): ``ReLU(temporal(x) + x + max_k semantic([x_neighbour, x]))``.

    Temporal branch: 1×1 → grouped k=3 conv → 1×1; semantic branch: 1×1 convs over (neighbour, self) edge features of the
    dynamic kNN graph (k nearest including self). Width = ``width_group × groups`` (G-TAD: 4 × 32 = 128).
    """

    def __init__(self, channels: int, k: int = 3, groups: int = 32, width_group: int = 4):
        super().__init__()
        width = width_group * groups
        self.k = k
        self.tconvs = nn.Sequential(
            nn.Conv1d(channels, width, 1), nn.ReLU(inplace=True),
            nn.Conv1d(width, width, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv1d(width, channels, 1))
        self.sconvs = nn.Sequential(
            nn.Conv2d(2 * channels, width, 1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv2d(width, channels, 1))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        neighbours = gather_neighbours(x, knn_indices(x, self.k))  # (B, C, T, k)
        edges = torch.cat([neighbours, x.unsqueeze(-1).expand_as(neighbours)], dim=1)
        sout = self.sconvs(edges).amax(-1)
        return self.relu(self.tconvs(x) + x + sout)
