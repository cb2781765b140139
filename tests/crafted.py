"""A ``.pt`` file as an attacker would craft it: unpickling it calls ``open(marker, "w")``, so the marker file's
existence afterwards proves that code from the file ran."""
from pathlib import Path

import torch


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def crafted_pt(path: Path, marker: Path, wrap=lambda payload: {"state_dict": {"w": torch.zeros(2)}, "meta": payload}):
    """Writes ``torch.save(wrap(payload))`` to ``path`` (by default: a state dict beside the payload); returns it."""
    torch.save(wrap(Payload(marker)), path)
    return path
