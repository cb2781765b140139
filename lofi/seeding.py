"""Seeds derived from tuples of integers (a run's seed, rank, epoch, iteration, ...), stable across runs, processes and
machines. Two derivations, each feeding its own kind of generator; changing either would change every random stream
the demo draws, so both stay as they are:

- :func:`derive_seed`: 63 bits of SHA-256, for ``torch.manual_seed`` and the global RNGs (the training loop);
- :func:`numpy_seed`: a 32-bit word of NumPy's ``SeedSequence``, for ``np.random.default_rng`` (the data reader).
"""
import hashlib

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers: the first 8 bytes of SHA-256 over ``"p0,p1,..."``, shifted right by one bit."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def numpy_seed(*parts: int) -> int:
    """A 32-bit seed from integers: the first word NumPy's ``SeedSequence(parts)`` generates."""
    return int(np.random.SeedSequence([int(v) for v in parts]).generate_state(1)[0])
