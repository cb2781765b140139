"""The pipeline's stages: one module per stage, each with ``run(ctx)``, and the table that declares them
(:mod:`lofi.stages.table`). Importing this package imports no stage module (the config reads the table alone)."""
