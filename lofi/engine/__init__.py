"""The training engine: process groups, the shared loop, checkpoints, run logs, plots and the feature cache."""
