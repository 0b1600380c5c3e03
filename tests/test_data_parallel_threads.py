"""Data-parallel ``fit`` with two ranks in one process, one thread each, on every backend.

``tests/test_distributed.py`` launches real MPI jobs (the ``tests-mpi`` session); these
tests run the same training logic without MPI: a :class:`ThreadWorld` gives each thread
a communicator whose collectives meet at a barrier and combine in rank order, so both
ranks get the same sums, as from an allreduce. Two ranks must train the network that one
process trains on the same global batches: the global batch's gradients summed from each
rank's share, Dropout masks drawn for the global batch, BatchNorm's statistics (and their
gradients) over the global batch, metrics and losses reduced over ranks.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
from _util import BACKEND, host, put, record_need_input_grad
from array_api_compat import is_writeable_array

import portanet as pn
from portanet.distributed import Communicator
from portanet.testing import AGREEMENT_RTOL, norm_rel_diff


class ThreadWorld:
    """``size`` ranks that are threads of this process; a collective is a barrier meeting."""

    def __init__(self, size: int = 2):
        self.size = size
        self.slots: list = [None] * size
        self.barrier = threading.Barrier(size, timeout=120)  # a failing rank breaks it: no hang

    def exchange(self, rank: int, value):
        """Every rank's ``value``, in rank order."""
        self.slots[rank] = value
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before all have read them
        return values


class ThreadComm(Communicator):
    kind = "threads"

    def __init__(self, world: ThreadWorld, rank: int):
        self.world, self.rank, self.size = world, rank, world.size

    def allreduce(self, buf):
        total = None
        for value in self.world.exchange(self.rank, buf):  # rank order: the same sum on each
            total = value if total is None else total + value
        return total * 1  # a new array: the ranks' networks share no memory

    def broadcast(self, buf, root=0):
        return self.world.exchange(self.rank, buf)[root] * 1

    def broadcast_object(self, obj, root=0):
        return copy.deepcopy(self.world.exchange(self.rank, obj)[root])

    def allreduce_host(self, values):
        return [sum(column) for column in zip(*self.world.exchange(self.rank, list(values)))]

    def same(self, value):
        return len(set(self.world.exchange(self.rank, value))) == 1

    def barrier(self):
        self.world.barrier.wait()

    def abort(self, code=1):
        self.world.barrier.abort()
        raise RuntimeError(f"rank {self.rank} aborted with code {code}")


def run_ranks(train, size: int = 2) -> list:
    """``train(comm)`` on ``size`` threads; their results in rank order (re-raises)."""
    world = ThreadWorld(size)
    results: list = [None] * size
    errors: list = []

    def one(rank: int) -> None:
        try:
            results[rank] = train(ThreadComm(world, rank))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
            world.barrier.abort()

    threads = [threading.Thread(target=one, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    if errors:
        raise errors[0]
    return results


def data(images: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, 1, 6, 6) if images else (150, 12))
    flat = x.reshape(len(x), -1)
    y = (flat[:, :4] + 0.3 * rng.standard_normal((len(x), 4))).argmax(axis=1)
    return x, y


NETWORKS = {
    "mlp": lambda: [pn.Dense(12, 16, activation="tanh"), pn.Dense(16, 4)],
    # no bias before BatchNorm (its gradient is rounding noise, which Adam would amplify)
    "bn-dropout": lambda: [pn.Dense(12, 16, bias=False), pn.BatchNorm(16), pn.ReLU(),
                           pn.Dropout(0.3), pn.Dense(16, 4)],
    "cnn": lambda: [pn.Conv2D(1, 3, 3, padding=1, bias=False), pn.BatchNorm(3), pn.ReLU(),
                    pn.MaxPool2D(2), pn.Flatten(), pn.Dropout(0.2), pn.Dense(27, 4)],
}


def weights(n: int) -> np.ndarray:
    w = np.random.default_rng(1).uniform(0.0, 3.0, n)
    w[:20] = 0.0  # whole zero-weight shares and batches, on either rank
    return w


def train(kind: str, xp, dtype: str, comm, batch: int, weighted: bool = False):
    backend, device = xp
    x, y = data(images=kind == "cnn")
    net = pn.Sequential(NETWORKS[kind](), backend=backend, device=device, dtype=dtype, seed=0,
                        input_shape=x.shape[1:])
    history = net.fit(x, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=2,
                      batch_size=batch, metrics=["accuracy"], validation_split=0.2, verbose=0,
                      distributed=comm, sample_weight=weights(len(x)) if weighted else None)
    return net, history


@pytest.mark.parametrize("kind, batch, weighted", [
    ("mlp", 32, False), ("mlp", 37, False), ("mlp", 37, True), ("bn-dropout", 37, False),
    ("bn-dropout", 16, True), ("cnn", 25, False)])
def test_two_ranks_train_what_one_process_trains(xp, dtype, kind, batch, weighted):
    if BACKEND == "jax" and kind != "bn-dropout":  # the cases that hold every synced path
        pytest.skip("JAX compiles each new shape (each rank's share): 3 minutes for all cases")
    one, one_history = train(kind, xp, dtype, None, batch, weighted)
    ranks = run_ranks(lambda comm: train(kind, xp, dtype, comm, batch, weighted))
    bound = AGREEMENT_RTOL[dtype]
    for net, history in ranks:
        for state in ("parameters", "buffers"):
            mine, theirs = getattr(net, state)(), getattr(one, state)()
            assert set(mine) == set(theirs)
            for name in theirs:
                diff = norm_rel_diff(mine[name], theirs[name])
                assert diff <= bound, f"{kind}, batch {batch}: {state} {name} differ by {diff:.1e}"
        for key, values in one_history.history.items():
            assert np.allclose(history.history[key], values, rtol=bound, atol=bound), key


def test_ranks_hold_their_own_rows_of_the_global_batch(xp):
    seen: dict[int, list] = {}

    class Rows(pn.Callback):
        def __init__(self, comm):
            self.comm = comm

        def on_batch_end(self, step, logs):
            seen.setdefault(self.comm.rank, []).append(self.net.context.global_rows)

    def fit(comm):
        backend, device = xp
        x, y = data(images=False)
        net = pn.Sequential(NETWORKS["mlp"](), backend=backend, device=device, seed=0)
        net.fit(x[:40], y[:40], loss="cross_entropy", optimizer=pn.SGD(0.1), epochs=1,
                batch_size=15, shuffle=False, verbose=0, distributed=comm, callbacks=[Rows(comm)])

    run_ranks(fit)
    # 40 rows in global batches of 15, 15, 10; the first rank takes one more when odd
    assert seen[0] == [(15, 0, 8), (15, 0, 8), (10, 0, 5)]
    assert seen[1] == [(15, 8, 15), (15, 8, 15), (10, 5, 10)]


def test_a_rank_that_raises_does_not_hang_the_other(xp):
    def fit(comm):
        backend, device = xp
        x, y = data(images=False)
        if comm.rank == 1:
            x = x[:, :-1]  # the wrong number of features on one rank
        net = pn.Sequential(NETWORKS["mlp"](), backend=backend, device=device, seed=0)
        net.fit(x, y, loss="cross_entropy", optimizer=pn.SGD(0.1), epochs=1, verbose=0,
                distributed=comm)

    with pytest.raises(ValueError, match="12"):
        run_ranks(fit)


class InPlaceThreadComm(ThreadComm):
    """Sums into ``buf`` itself where it can be written, as MPI's in-place allreduce does."""

    def allreduce(self, buf):
        total = super().allreduce(buf)
        self.world.barrier.wait()  # every rank has read every buffer before any is overwritten
        if not is_writeable_array(buf):
            return total
        buf[...] = total
        return buf


def test_reduce_sums_gradients_and_loss_at_every_step(xp, dtype):
    # The packed buffer is written again each step: each step's sums must be that step's.
    xs, device = xp
    seen: dict[int, list] = {}

    def steps(comm):
        dp = pn.distributed.DataParallel(comm)
        for step in range(3):
            r = comm.rank + step
            grads = {"0.weight": put(xs, device, np.full((2, 3), r), dtype),
                     "0.bias": put(xs, device, np.full(4, 10.0 * r), dtype)}
            out, total = dp.reduce(grads, put(xs, device, np.asarray(r + 0.5), dtype))
            seen.setdefault(comm.rank, []).append(
                (host(out["0.weight"]).copy(), host(out["0.bias"]).copy(), float(host(total))))

    run_ranks(lambda comm: steps(InPlaceThreadComm(comm.world, comm.rank)))
    for rank in (0, 1):
        for step, (weight, bias, total) in enumerate(seen[rank]):
            want = 2 * step + 1.0  # (0 + step) + (1 + step)
            np.testing.assert_array_equal(weight, np.full((2, 3), want))
            np.testing.assert_array_equal(bias, np.full(4, 10.0 * want))
            assert total == want + 1.0


def test_a_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step(xp, monkeypatch):
    # Ctrl-C reaches one process of an MPI job (here rank 0, in its third step); every rank
    # must stop at the same step boundary, or the next collective would wait forever.
    flags = {}  # each rank's Ctrl-C flag, by thread

    class Interrupts(pn.training._Interrupts):
        def __init__(self):
            super().__init__()
            flags[threading.get_ident()] = self

    class CtrlCOnRankZero(pn.Callback):
        steps = 0

        def on_batch_end(self, step, logs):
            self.steps += 1
            if self.comm.rank == 0 and self.steps == 3:
                flags[threading.get_ident()].requested = True  # as a SIGINT would set it

    monkeypatch.setattr(pn.training, "_Interrupts", Interrupts)

    def fit(comm):
        backend, device = xp
        x, y = data(images=False)
        net = pn.Sequential(NETWORKS["mlp"](), backend=backend, device=device, seed=0)
        opt, cb = pn.SGD(0.1), CtrlCOnRankZero()
        history = net.fit(x, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=30,
                          verbose=0, distributed=comm, callbacks=[cb])
        return history.interrupted, history.epoch, opt.step_count

    assert run_ranks(fit) == [(True, [], 3), (True, [], 3)]


def test_ranks_never_ask_the_first_layer_for_the_input_gradient(monkeypatch):
    # as in one process (test_training.py): dL/dx of the first layer would be thrown away
    asked = record_need_input_grad(monkeypatch, pn.Dense)

    def fit(comm):
        x, y = data(images=False)
        net = pn.Sequential([pn.Dense(12, 4)], seed=0)
        net.fit(x[:40], y[:40], loss="cross_entropy", optimizer=pn.SGD(0.1), batch_size=20,
                verbose=0, distributed=comm)

    run_ranks(fit)
    assert asked == [False] * 4  # 2 steps on each of 2 ranks


class _CountingComm(ThreadComm):
    """A ThreadComm that records each collective it is asked for."""

    def __init__(self, world, rank, calls):
        super().__init__(world, rank)
        self.calls = calls

    def allreduce(self, buf):
        self.calls.append("allreduce")
        return super().allreduce(buf)

    def allreduce_host(self, values):
        self.calls.append("allreduce_host")
        return super().allreduce_host(values)

    def broadcast(self, buf, root=0):
        self.calls.append("broadcast")
        return super().broadcast(buf, root)

    def broadcast_object(self, obj, root=0):
        self.calls.append("broadcast_object")
        return super().broadcast_object(obj, root)


def test_a_world_of_one_trains_as_one_process_with_no_collectives(xp):
    backend, device = xp
    x, y = data(images=False)

    def fit(comm):
        net = pn.Sequential(NETWORKS["bn-dropout"](), backend=backend, device=device, seed=0)
        net.fit(x, y, loss="cross_entropy", optimizer=pn.Adam(1e-2), epochs=1, batch_size=37,
                verbose=0, distributed=comm)
        return net

    calls = []
    alone = fit(_CountingComm(ThreadWorld(1), 0, calls))
    assert calls == []  # mpiexec -n 1 pays for no collective
    single = fit(None)
    for name, value in single.state_dict().items():
        np.testing.assert_array_equal(alone.state_dict()[name], value, err_msg=name)
