"""A small fully-connected sigmoid network in plain NumPy, with optional bnorm batch norm.

Used by ``batchnorm_paper_figure1.ipynb`` to reproduce Figure 1 of Ioffe & Szegedy (2015),
"Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift".

Everything except batch normalisation is written out by hand here: linear layers, the sigmoid,
softmax cross-entropy, their backward passes and plain SGD.  Batch normalisation comes from
``bnorm.BatchNorm1d``: ``forward`` in train mode while training, eval mode (running statistics)
for evaluation, ``backward(dy)`` for its gradients, and an in-place SGD update of ``gamma`` /
``beta`` from ``grad_gamma`` / ``grad_beta``.

Network (one hidden layer shown; there are three)::

    h_prev --Linear--> z --[BatchNorm1d]--> u --sigmoid--> h

``u`` is the input of the sigmoid; the notebook plots its percentiles for one unit of the last
hidden layer.  With batch norm the linear layer has no bias: BN's ``beta`` takes its place (the
paper, section 3.2).
"""

from __future__ import annotations

import warnings

import numpy as np

import bnorm

with warnings.catch_warnings():
    # Without ipywidgets, tqdm.auto warns "IProgress not found" and falls back to a text bar,
    # which is all we need.
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

__all__ = ["MLP", "sigmoid", "softmax_cross_entropy", "steps_to_accuracy", "train"]


def sigmoid(z):
    """Logistic function, written with tanh so that it never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of a softmax over the last axis, and its gradient w.r.t. ``logits``.

    ``labels`` are integer class indices.  Returns ``(loss, dlogits)``.
    """
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)  # avoids overflow in exp
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(n), labels].mean()
    dlogits = np.exp(log_probs)  # softmax probabilities
    dlogits[np.arange(n), labels] -= 1.0
    dlogits /= n
    return loss, dlogits


class MLP:
    """Fully-connected network: ``len(hidden)`` sigmoid layers and a linear 10-way output.

    Parameters
    ----------
    n_in, hidden, n_out
        Layer sizes, e.g. ``MLP(64, (100, 100, 100), 10)``.
    batch_norm
        If True, a ``bnorm.BatchNorm1d`` sits between each hidden linear layer and its sigmoid.
    init_std
        Weights are drawn from N(0, init_std**2) ("small random Gaussian values").
    seed
        Seed of the weight initialisation.
    """

    def __init__(self, n_in, hidden=(100, 100, 100), n_out=10, *, batch_norm=False,
                 init_std=0.1, seed=0, dtype=np.float64):
        rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.batch_norm = batch_norm
        sizes = [n_in, *hidden, n_out]
        self.W = [(init_std * rng.standard_normal((a, b))).astype(self.dtype)
                  for a, b in zip(sizes[:-1], sizes[1:])]
        # Hidden layers followed by BN need no bias (BN's beta replaces it); the output layer keeps one.
        self.b = [None if (batch_norm and i < len(hidden)) else np.zeros(b, self.dtype)
                  for i, b in enumerate(sizes[1:])]
        self.bn = [bnorm.BatchNorm1d(h, dtype=self.dtype) if batch_norm else None for h in hidden]

    # -- modes -------------------------------------------------------------------------------
    def train(self):
        """Training mode: BN normalises with the statistics of the current mini-batch."""
        for bn in self.bn:
            if bn is not None:
                bn.train()
        return self

    def eval(self):
        """Evaluation mode: BN uses its running mean and variance."""
        for bn in self.bn:
            if bn is not None:
                bn.eval()
        return self

    # -- forward / backward -------------------------------------------------------------------
    def forward(self, x):
        """Return the logits for a batch ``x`` of shape (N, n_in).

        Keeps what the backward pass needs, and ``self.sigmoid_inputs``: for each hidden layer the
        (N, units) array fed to its sigmoid.
        """
        h = np.asarray(x, dtype=self.dtype)
        self._inputs = []          # input of each linear layer
        self._activations = []     # output of each sigmoid
        self.sigmoid_inputs = []
        for W, b, bn in zip(self.W[:-1], self.b[:-1], self.bn):
            self._inputs.append(h)
            z = h @ W
            if b is not None:
                z += b
            u = bn.forward(z) if bn is not None else z
            h = sigmoid(u)
            self.sigmoid_inputs.append(u)
            self._activations.append(h)
        self._inputs.append(h)
        return h @ self.W[-1] + self.b[-1]

    def backward(self, dlogits):
        """Backpropagate ``dlogits`` through the network of the most recent ``forward``.

        Sets ``self.dW`` and ``self.db``; the BN layers keep their own ``grad_gamma`` / ``grad_beta``.
        """
        n_layers = len(self.W)
        self.dW = [None] * n_layers
        self.db = [None] * n_layers
        # Output layer: logits = h @ W + b
        self.dW[-1] = self._inputs[-1].T @ dlogits
        self.db[-1] = dlogits.sum(axis=0)
        dh = dlogits @ self.W[-1].T
        # Hidden layers, last to first: h = sigmoid(u), u = BN(z) (or u = z), z = h_prev @ W (+ b)
        for i in reversed(range(n_layers - 1)):
            s = self._activations[i]
            du = dh * s * (1.0 - s)                     # sigmoid'(u) = s (1 - s)
            bn = self.bn[i]
            dz = bn.backward(du) if bn is not None else du
            self.dW[i] = self._inputs[i].T @ dz
            if self.b[i] is not None:
                self.db[i] = dz.sum(axis=0)
            if i > 0:
                dh = dz @ self.W[i].T

    def sgd_step(self, lr):
        """Plain SGD on every parameter, in place."""
        for W, dW in zip(self.W, self.dW):
            W -= lr * dW
        for b, db in zip(self.b, self.db):
            if b is not None:
                b -= lr * db
        for bn in self.bn:
            if bn is not None:
                bn.gamma[...] -= lr * bn.grad_gamma
                bn.beta[...] -= lr * bn.grad_beta


def train(model, X_train, y_train, X_test, y_test, *, steps, lr, batch_size=60, eval_every=50,
          watch_unit=0, seed=0, progress=True, desc=None):
    """Train ``model`` with SGD on shuffled mini-batches and record held-out statistics.

    Every ``eval_every`` steps (and before the first) the model is evaluated on the held-out set in
    eval mode: accuracy, and the 15th/50th/85th percentiles of the sigmoid input of unit
    ``watch_unit`` of the last hidden layer.

    Returns a dict of NumPy arrays: ``step``, ``test_acc``, ``percentiles`` (shape (k, 3)),
    ``train_loss`` (the mean training loss since the previous evaluation), and ``diverged`` (True if
    the loss became non-finite, in which case training stops early).
    """
    rng = np.random.default_rng(seed)
    n = len(X_train)
    batches_per_epoch = n // batch_size  # drop the incomplete last batch of each epoch
    order = rng.permutation(n)
    hist = {"step": [], "test_acc": [], "percentiles": [], "train_loss": []}
    loss_sum, loss_count, diverged = 0.0, 0, False

    def evaluate(step):
        model.eval()
        logits = model.forward(X_test)
        model.train()
        u = model.sigmoid_inputs[-1][:, watch_unit]
        hist["step"].append(step)
        hist["test_acc"].append(float((logits.argmax(axis=1) == y_test).mean()))
        hist["percentiles"].append(np.percentile(u, [15, 50, 85]))
        hist["train_loss"].append(loss_sum / loss_count if loss_count else np.nan)

    model.train()
    evaluate(0)
    for step in tqdm(range(1, steps + 1), desc=desc, disable=not progress, mininterval=0.5):
        k = (step - 1) % batches_per_epoch
        if k == 0 and step > 1:
            order = rng.permutation(n)
        idx = order[k * batch_size:(k + 1) * batch_size]
        logits = model.forward(X_train[idx])
        loss, dlogits = softmax_cross_entropy(logits, y_train[idx])
        if not np.isfinite(loss):
            diverged = True
            break
        model.backward(dlogits)
        model.sgd_step(lr)
        loss_sum += loss
        loss_count += 1
        if step % eval_every == 0 or step == steps:
            evaluate(step)
            loss_sum, loss_count = 0.0, 0
    out = {key: np.array(val) for key, val in hist.items()}
    out["diverged"] = diverged
    return out


def steps_to_accuracy(history, target):
    """First recorded step at which held-out accuracy reached ``target`` (None if never)."""
    hit = np.flatnonzero(history["test_acc"] >= target)
    return int(history["step"][hit[0]]) if hit.size else None
