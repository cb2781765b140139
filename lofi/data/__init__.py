"""Video data: annotation parsing, shard packing, the synthetic benchmark and the streaming reader."""
