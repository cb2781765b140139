"""Shards → frame tensors at the fidelity the LoFi schedule asks for (issue 3 §3)."""
from .loader import VideoLoader, build_loader, resolve_backend

__all__ = ["VideoLoader", "build_loader", "resolve_backend"]
