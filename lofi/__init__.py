"""LoFi: low-fidelity end-to-end video encoder training for temporal action localization."""

__version__ = "0.1.0"
