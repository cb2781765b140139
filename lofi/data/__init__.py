"""Video data: annotation parsing, shard packing, the synthetic benchmark and the streaming reader (build_loader)."""
from .loader import CorruptLimitError, VideoLoader, build_loader, resolve_backend

__all__ = ["CorruptLimitError", "VideoLoader", "build_loader", "resolve_backend"]
