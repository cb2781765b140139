import math

import pytest

from lofi.fidelity import Fidelity, LoFiSchedule, even_round, reduce

FULL = Fidelity(100, 8, 224, 224)
S, T, ST = Fidelity(100, 8, 112, 112), Fidelity(25, 8, 224, 224), Fidelity(50, 8, 158, 158)


def test_paper_defaults():
    assert LoFiSchedule("s", FULL)(0, 0) == S
    assert LoFiSchedule("t", FULL)(0, 0) == T
    assert LoFiSchedule("st", FULL)(0, 0) == ST
    assert LoFiSchedule("full", FULL)(7, 3) == FULL
    assert LoFiSchedule("long_cycle", FULL).fidelities() == [S, T, ST]


def test_rounding_is_to_even():
    assert even_round(224 / math.sqrt(2)) == 158
    assert even_round(113.0) == 114 and even_round(112.9) == 112 and even_round(0.2) == 2
    assert reduce(Fidelity(100, 8, 256, 320), r_s=math.sqrt(2)) == Fidelity(100, 8, 182, 226)
    with pytest.raises(ValueError, match="L=30 is not divisible by r_t=4"):
        reduce(Fidelity(30, 8, 224, 224), r_t=4)


def test_short_cycle_sequence_pinned():
    sched = LoFiSchedule("short_cycle", FULL, c_s=2)
    seq = [sched(0, i) for i in range(8)]
    assert seq == [S, S, T, T, ST, ST, S, S]
    assert sched(5, 4) == ST  # restarts each epoch; depends on the iteration only
    paper = LoFiSchedule("short_cycle", FULL)
    assert [paper(0, i) for i in (0, 15, 16, 31, 32, 47, 48)] == [S, S, T, T, ST, ST, S]


def test_long_cycle_sequence_pinned():
    sched = LoFiSchedule("long_cycle", FULL)
    assert [sched(e, 0) for e in range(5)] == [S, T, ST, S, T]
    assert {sched(1, i) for i in range(100)} == {T}
    assert [LoFiSchedule("long_cycle", FULL, c_l=2)(e, 9) for e in range(6)] == [S, S, T, T, ST, ST]


@pytest.mark.parametrize("mode", ["s", "t", "st", "short_cycle", "long_cycle"])
def test_lofi_modes_never_full(mode):
    sched = LoFiSchedule(mode, FULL, c_s=1)
    assert all(sched(e, i) != FULL for e in range(4) for i in range(10))


def test_pure_function_and_stride_kept():
    full = Fidelity(100, 8, 224, 224, stride=3)
    a, b = LoFiSchedule("short_cycle", full, c_s=3), LoFiSchedule("short_cycle", full, c_s=3)
    assert [a(1, i) for i in range(12)] == [b(1, i) for i in reversed(range(12))][::-1]
    assert all(f.stride == 3 for f in a.fidelities())


def test_bad_arguments_named():
    with pytest.raises(ValueError, match="mode"):
        LoFiSchedule("multigrid", FULL)
    with pytest.raises(ValueError, match="c_s"):
        LoFiSchedule("short_cycle", FULL, c_s=0)
    with pytest.raises(ValueError, match="full fidelity"):
        LoFiSchedule("s", FULL, r_s=1.0)
    with pytest.raises(ValueError, match="Fidelity.H"):
        Fidelity(100, 8, 0, 224)
