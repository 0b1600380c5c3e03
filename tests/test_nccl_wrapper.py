"""The NCCL wrapper's calls, on a recording stand-in of ``cupy.cuda.nccl``.

Real NCCL needs GPUs (``bench/gpu_check.sh`` runs it on one); these tests pin what
portanet asks of it: in place (send and receive buffers the same pointer), the whole
flat buffer, the dtype's NCCL code, a sum, the current stream; and a refusal, not a
wrong reduction, for dtypes or layouts NCCL would misread.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from portanet.distributed import _NCCL

FLOAT32, FLOAT64, SUM, STREAM = 7, 8, 0, 4242


class RecordingComm:
    def __init__(self):
        self.calls = []

    def allReduce(self, *args):  # noqa: N802 (CuPy's name)
        self.calls.append(("allReduce", *args))

    def bcast(self, *args):
        self.calls.append(("bcast", *args))


def wrapper() -> tuple[_NCCL, RecordingComm]:
    nccl = SimpleNamespace(NCCL_FLOAT32=FLOAT32, NCCL_FLOAT64=FLOAT64, NCCL_SUM=SUM)
    cupy = SimpleNamespace(cuda=SimpleNamespace(get_current_stream=lambda: SimpleNamespace(ptr=STREAM)))
    comm = RecordingComm()
    return _NCCL(nccl, comm, cupy), comm


def device_array(dtype: str = "float32", size: int = 6, contiguous: bool = True):
    return SimpleNamespace(data=SimpleNamespace(ptr=1000), size=size, dtype=dtype,
                           flags=SimpleNamespace(c_contiguous=contiguous))


@pytest.mark.parametrize("dtype, code", [("float32", FLOAT32), ("float64", FLOAT64)])
def test_allreduce_sums_the_whole_buffer_in_place_on_the_current_stream(dtype, code):
    nccl, comm = wrapper()
    buf = device_array(dtype, size=11)
    assert nccl.allreduce(buf) is buf
    assert comm.calls == [("allReduce", 1000, 1000, 11, code, SUM, STREAM)]


def test_broadcast_is_in_place_from_the_root():
    nccl, comm = wrapper()
    buf = device_array("float64", size=5)
    assert nccl.broadcast(buf, root=1) is buf
    assert comm.calls == [("bcast", 1000, 5, FLOAT64, 1, STREAM)]


@pytest.mark.parametrize("buf", [device_array("float16"), device_array("int64"),
                                 device_array(contiguous=False)])
def test_what_nccl_would_misread_is_refused(buf):
    nccl, comm = wrapper()
    with pytest.raises(TypeError, match="contiguous float32 or float64"):
        nccl.allreduce(buf)
    with pytest.raises(TypeError, match="contiguous float32 or float64"):
        nccl.broadcast(buf)
    assert comm.calls == []
