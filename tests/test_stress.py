"""Concurrency stress: 8 Python threads for a bounded time.

BNORM_STRESS_SECONDS (default 20) is the total wall time of the tests (35% shared
module, 15% load_state_dict on a shared module, 10% lost updates, 40% separate
modules):

* one shared module driven by all 8 threads (training forwards, backwards, eval
  forwards, train/eval switches, attribute assignments, state_dict and
  load_state_dict): no crash, no unexpected exception, and no torn statistics.
  The invariant that makes tearing checkable: the module has momentum=1.0, so a
  training forward sets running_mean to its batch's mean and running_var to its
  unbiased variance, and every batch is built so that both equal one fresh integer
  "id" (rows id - d and id + d with 2 d^2 = id); load_state_dict likewise loads
  running_mean = running_var = a fresh id. Any state produced by a serial order of
  these calls therefore has running_mean == running_var == one issued id in every
  channel. state_dict() snapshots, the outputs of eval-mode forwards (which reveal
  the statistics the kernel used) and the final state are all checked against
  that, and num_batches_tracked against the number of training-mode forwards
  (recognisable from their outputs) -- a lost update would show there.
* separate modules, one per thread: every thread replays a fixed script of calls
  on a fresh module again and again; each round's results (outputs, gradients,
  statistics) must be bit-for-bit those of the same script run serially before.

The number of calls completed is printed in pytest's summary.
"""
import hashlib
import os
import threading
import time

import numpy as np
import pytest

import bnorm

THREADS = 8
DURATION = float(os.environ.get("BNORM_STRESS_SECONDS", "20"))
EPS = 1e-5
FIGURES = []  # printed in pytest's summary by conftest.py



def run_threads(targets, seconds):
    """Run the targets (each called with its index) in threads until `seconds` pass;
    re-raise the first exception any of them raised."""
    errors = []
    deadline = time.monotonic() + seconds

    def wrap(i, target):
        try:
            target(i, deadline)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((i, exc))

    threads = [threading.Thread(target=wrap, args=(i, t), daemon=True) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
        assert not t.is_alive(), "a stress thread hung (deadlock?)"
    if errors:
        raise errors[0][1]


# ---------------------------------------------------------------------------
# One shared module
# ---------------------------------------------------------------------------

C = 64


class Ids:
    """Fresh identifiers for batches and loaded states; an id is registered before use."""

    def __init__(self):
        self.lock = threading.Lock()
        self.next = 16
        self.issued = {0}

    def new(self):
        with self.lock:
            self.next += 1
            self.issued.add(self.next)
            return self.next


def batch(i, channels=C):
    """(2, C) float64 rows i - d and i + d: batch mean i, unbiased variance 2 d^2 = i."""
    d = np.sqrt(i / 2.0)
    return np.array([[i - d] * channels, [i + d] * channels])


def classify(y, i):
    """('train', None) if y is batch(i)'s training-mode output, ('eval', j) if it is its
    eval-mode output with running_mean == running_var == j in every channel, else None."""
    d = np.sqrt(i / 2.0)
    y0, y1 = y[0], y[1]
    train_value = d / np.sqrt(d * d + EPS)
    if np.allclose(y0, -train_value, rtol=1e-12, atol=0) and np.allclose(y1, train_value, rtol=1e-12, atol=0):
        return "train", None
    j = (2 * d / (y1 - y0)) ** 2 - EPS  # y1 - y0 = 2 d / sqrt(j + eps), per channel
    j_int = np.round(j)
    if not np.allclose(j, j_int, rtol=1e-7, atol=1e-7) or len(set(j_int.tolist())) != 1:
        return None
    j = float(j_int[0])
    expected = (i - d - j) / np.sqrt(j + EPS)
    if not np.allclose(y0, expected, rtol=1e-9, atol=1e-9):
        return None
    return "eval", j


def consistent(running_mean, running_var, issued):
    """running_mean == running_var == one issued id in every channel."""
    value = float(running_mean[0])
    return (np.all(running_mean == value) and np.allclose(running_var, value, rtol=1e-9, atol=1e-9)
            and round(value) in issued and abs(value - round(value)) < 1e-9 * max(1.0, value))


class SharedModule:
    """One module and the roles of the threads driving it, with the checks above."""

    def __init__(self):
        self.bn = bnorm.BatchNorm1d(C, momentum=1.0, dtype=np.float64)
        self.ids = Ids()
        self.bn(batch(self.ids.new()))
        self.counts = dict.fromkeys(["train_forward", "eval_forward", "backward", "switch", "assign", "state_dict",
                                     "load_state_dict"], 0)
        self.counts["train_forward"] = 1
        self.torn = []
        self.lock = threading.Lock()

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def forwarder(self, k, deadline):
        bn, rng = self.bn, np.random.default_rng(k)
        while time.monotonic() < deadline:
            i = self.ids.new()
            y = bn(batch(i))
            kind = classify(y, i)
            if kind is None:
                self.torn.append(f"forward of batch {i}: the output matches no consistent statistics: {y[:, :3]}")
            elif kind[0] == "train":
                self.add("train_forward")
            else:
                self.add("eval_forward")
                if kind[1] not in self.ids.issued:
                    self.torn.append(f"an eval forward used statistics {kind[1]}, which no call produced")
            if rng.random() < 0.5:
                dx = bn.backward(rng.standard_normal((2, C)))
                assert dx.shape == (2, C) and np.isfinite(dx).all()
                self.add("backward")

    def switcher(self, k, deadline):
        bn, n = self.bn, 0
        while time.monotonic() < deadline:
            if n % 4 == 0:
                bn.train()
            elif n % 4 == 1:
                bn.eval()
            elif n % 4 == 2:
                bn.training = True
            else:
                bn.train(False)
            bn.gamma = np.ones(C)       # assignments of the values they already hold,
            bn.beta[...] = 0.0          # so that outputs stay identifiable
            n += 1
            self.add("switch")
            self.add("assign", 2)
            time.sleep(0.0005)

    def reader(self, k, deadline):
        while time.monotonic() < deadline:
            sd = self.bn.state_dict()
            self.add("state_dict")
            if not consistent(sd["running_mean"], sd["running_var"], self.ids.issued):
                self.torn.append(f"state_dict: running_mean {sd['running_mean'][:3]}..., "
                                 f"running_var {sd['running_var'][:3]}...")
            time.sleep(0.0001)  # leave the GIL to the others now and then

    def loader(self, k, deadline):
        while time.monotonic() < deadline:
            i = self.ids.new()
            self.bn.load_state_dict({"weight": np.ones(C), "bias": np.zeros(C), "running_mean": np.full(C, float(i)),
                                     "running_var": np.full(C, float(i)), "num_batches_tracked": np.array(1000)})
            self.add("load_state_dict")
            time.sleep(0.0005)

    def run(self, roles, seconds, what):
        start = time.monotonic()
        run_threads([getattr(self, role) for role in roles], seconds)
        elapsed = time.monotonic() - start
        total = sum(self.counts.values())
        FIGURES.append(f"stress, {what}: {total} calls by {len(roles)} threads in {elapsed:.1f} s "
                       f"({', '.join(f'{k} {v}' for k, v in self.counts.items() if v)}); "
                       f"torn observations: {len(self.torn)}")
        assert not self.torn, f"{len(self.torn)} torn observations, e.g.:\n" + "\n".join(self.torn[:5])
        assert consistent(self.bn.running_mean, self.bn.running_var, self.ids.issued), "final statistics are torn"


def test_shared_module_is_never_torn():
    """Training and eval forwards, backwards, mode switches, assignments and state_dict
    snapshots on one module from 8 threads."""
    shared = SharedModule()
    shared.run(["forwarder"] * 5 + ["switcher", "reader", "reader"], 0.35 * DURATION, "shared module")
    assert shared.counts["train_forward"] > 50 and shared.counts["eval_forward"] > 50, shared.counts


def test_load_state_dict_is_atomic():
    """load_state_dict on a module other threads are training, evaluating and reading:
    every observer sees the state before the load or after it, never half of it."""
    shared = SharedModule()
    shared.run(["forwarder"] * 4 + ["switcher", "reader", "loader", "loader"], 0.15 * DURATION,
               "shared module with load_state_dict")


def test_no_update_is_lost():
    """num_batches_tracked counts every training-mode forward made by concurrent threads."""
    bn = bnorm.BatchNorm1d(C, momentum=1.0, dtype=np.float64)
    ids = Ids()
    trains = []

    def forwarder(k, deadline):
        n = 0
        while time.monotonic() < deadline:
            i = ids.new()
            kind = classify(bn(batch(i)), i)
            assert kind is not None, "torn statistics"
            n += kind[0] == "train"
        trains.append(n)

    def switcher(k, deadline):
        while time.monotonic() < deadline:
            bn.train(not bn.training)
            time.sleep(0.0002)

    run_threads([forwarder] * (THREADS - 1) + [switcher], 0.1 * DURATION)
    assert bn.num_batches_tracked == sum(trains) > 0
    assert consistent(bn.running_mean, bn.running_var, ids.issued)


# ---------------------------------------------------------------------------
# Separate modules
# ---------------------------------------------------------------------------

SCRIPTS = [  # (class, shape, dtype, channels-last input, options)
    (bnorm.BatchNorm2d, (8, 16, 24, 24), np.float32, False, {}),
    (bnorm.BatchNorm2d, (8, 16, 24, 24), np.float32, True, {"activation": "relu"}),
    (bnorm.BatchNorm1d, (256, 300), np.float64, False, {"momentum": None}),
    (bnorm.BatchNorm3d, (2, 4, 8, 16, 16), np.float64, False, {"affine": False}),
    (bnorm.BatchNorm2d, (4, 3, 64, 64), np.float16, False, {}),
    (bnorm.BatchNorm1d, (16, 8, 1000), np.float32, False, {"track_running_stats": False}),
    (bnorm.BatchNorm2d, (2, 64, 32, 32), np.float32, True, {"momentum": 0.3}),
    (bnorm.BatchNorm3d, (2, 8, 4, 32, 32), np.float32, True, {}),
]
STEPS = 24


def make_inputs(k):
    cls, shape, dtype, channels_last, options = SCRIPTS[k]
    rng = np.random.default_rng(1000 + k)
    xs = []
    for _ in range(4):
        x = (rng.standard_normal(shape) * rng.uniform(0.5, 3) + rng.uniform(-5, 5)).astype(dtype)
        if channels_last:
            order = (0,) + tuple(range(2, len(shape))) + (1,)
            back = (0, len(shape) - 1) + tuple(range(1, len(shape) - 1))
            x = np.ascontiguousarray(x.transpose(order)).transpose(back)
        xs.append(x)
    dys = [rng.standard_normal(shape).astype(dtype) for _ in range(2)]
    params = [rng.uniform(0.5, 1.5, shape[1]).astype(np.float32 if dtype == np.float16 else dtype) for _ in range(2)]
    return xs, dys, params


def run_script(k, inputs, stop=None):
    """The script of thread k on a fresh module; returns the digests of every step's
    results (None if `stop` said to stop early)."""
    cls, shape, dtype, channels_last, options = SCRIPTS[k]
    xs, dys, params = inputs
    bn = cls(shape[1], dtype=dtype, **options)
    digests = []
    for step in range(STEPS):
        if stop is not None and stop():
            return None
        h = hashlib.blake2b(digest_size=16)
        op = step % 8
        if op in (0, 2, 5):
            h.update(bn(xs[step % len(xs)]).tobytes())
        elif op in (1, 3, 6):
            h.update(bn.backward(dys[step % len(dys)]).tobytes())
            if bn.affine:
                h.update(bn.grad_gamma.tobytes() + bn.grad_beta.tobytes())
        elif op == 4:
            bn.train(not bn.training)
            if bn.affine:
                bn.gamma = params[step % 2]
        else:
            state = bn.state_dict()
            if bn.track_running_stats:
                state["running_var"] = state["running_var"] * np.float32(1.5)
            bn.load_state_dict(state)
            bn.num_batches_tracked = step if bn.track_running_stats else 0
        for value in bn.state_dict().values():
            h.update(np.ascontiguousarray(value).tobytes())
        digests.append(h.hexdigest())
    return digests


def test_separate_modules_match_a_serial_run():
    inputs = [make_inputs(k) for k in range(THREADS)]
    reference = [run_script(k, inputs[k]) for k in range(THREADS)]
    rounds = [0] * THREADS
    mismatches = []

    def worker(k, deadline):
        while time.monotonic() < deadline:
            digests = run_script(k, inputs[k], stop=lambda: time.monotonic() >= deadline)
            if digests is None:
                return
            rounds[k] += 1
            if digests != reference[k]:
                first = next(i for i, (a, b) in enumerate(zip(digests, reference[k])) if a != b)
                mismatches.append(f"thread {k} ({SCRIPTS[k][0].__name__} {SCRIPTS[k][1]} "
                                  f"{np.dtype(SCRIPTS[k][2]).name}), round {rounds[k]}: step {first} differs")

    start = time.monotonic()
    run_threads([worker] * THREADS, 0.4 * DURATION)
    elapsed = time.monotonic() - start
    calls = sum(rounds) * STEPS
    FIGURES.append(f"stress, separate modules: {calls} calls ({sum(rounds)} script rounds, {STEPS} steps each) "
                   f"by {THREADS} threads in {elapsed:.1f} s, all compared bit for bit with a serial run; "
                   f"mismatches: {len(mismatches)}")
    assert not mismatches, "\n".join(mismatches[:10])
    assert min(rounds) >= 1, f"some thread never completed a round: {rounds}"
