"""FF CNN and channel-wise competitive (CwC) training steps written in plain PyTorch.

The PyTorch baseline of benchmarks/bench_cnn.py.  :class:`TorchFFCNN` is built from an
``fflib.FFModel`` (its layers, block cut, head, FF settings and current weights, copied) and
runs the same training step as ``FFModel.train_step``:

* FF / SymBa losses (label in the input): the rows [x with the true label | x with the
  negative label | x with the neutral label] are stacked into one batch, as fflib does; the
  neutral rows exist only when the one-pass head trains.  Label encodings: ``onehot`` (the
  first K pixels of every channel plane), ``fourier`` (a per-class plane wave added to every
  channel; neutral: the mean wave), ``embedding`` (a trained (H, W) map per class as an
  extra input channel, trained by block 0's loss; neutral: the mean map).  Block losses use the first 2B rows:
  FF ``softplus(theta - g_pos) + softplus(g_neg - theta)``, SymBa
  ``softplus(-alpha (g_pos - g_neg))``, goodness the sum or mean of the squared block output.
* CwC / PvN losses (no label in the input, no negatives): B rows; the block output's
  channels split into K groups, ``G[n, j]`` = mean over the group's channels and H, W of the
  squared output; CwC = softmax cross-entropy of G against the label (PvN mixed in by
  ``pvn_weight``).
* Each block's input is the previous block's output, detached; layers are Conv2d,
  BatchNorm2d (batch statistics of the training rows only, neutral rows normalised with them),
  ReLU, MaxPool2d, Flatten, Linear and LenNorm (``rms``: x / sqrt(mean(x^2) + eps) over each
  sample; ``l2``: x / (|x| + eps)).
* One-pass head: linear + softmax cross-entropy on the concatenated, length-normalised
  (config ``norm``) outputs of the head layers for the neutral rows (CwC: the B rows), its
  input detached.
* One ``torch.optim.Adam`` per block and one for the head; every block steps after all
  blocks ran (as fflib, which defers the per-layer steps to the end of the step).

``neutral="separate"`` runs the neutral rows through the blocks without autograd, so that the
backward covers only the 2B training rows (fflib's arithmetic); the default ``"stacked"``
keeps one batch of 3B rows, as a PyTorch user would write it (the backward then also spans the
neutral rows, whose gradients are zero).

Everything is float32; the caller sets ``torch.set_num_threads``.  :func:`self_test` checks a
few steps against fflib on one batch (per-block losses, rtol 1e-4).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

LABEL_FREE = ("cwc", "pvn")


def fourier_patterns(K, H, W):
    """(K, H, W) plane waves: class k has orientation pi k / K and wavelength
    max(H, W) / (2 + k mod 3) pixels (computed in float64, returned as float32)."""
    h = np.arange(H, dtype=np.float64)[:, None]
    w = np.arange(W, dtype=np.float64)[None, :]
    out = np.empty((K, H, W), np.float64)
    for k in range(K):
        phi = math.pi * k / K
        lam = max(H, W) / (2 + k % 3)
        out[k] = np.cos(2.0 * math.pi * (h * math.cos(phi) + w * math.sin(phi)) / lam)
    return torch.from_numpy(out.astype(np.float32))


def length_normalise(flat, kind, eps):
    """Each row of flat (R, D) normalised: rms, l2 or none."""
    if kind == "rms":
        return flat * torch.rsqrt(flat.square().mean(dim=1, keepdim=True) + eps)
    if kind == "l2":
        return flat / (torch.linalg.vector_norm(flat, dim=1, keepdim=True) + eps)
    if kind == "none":
        return flat
    raise ValueError(f"unknown norm {kind!r}")


class TorchFFCNN:
    """A copy of an fflib FF CNN / CwC network with its training step in PyTorch.

    ``model``: an ``fflib.FFModel`` with Conv2d/BatchNorm2d/ReLU/MaxPool2d/Flatten/Linear/
    LenNorm layers cut into consecutive, non-overlapping blocks.  ``lr``: Adam learning rate
    (all blocks and the head).  ``fused``: ``torch.optim.Adam(fused=...)``.
    ``channels_last``: run the convolutions in channels-last memory format.
    """

    def __init__(self, model, lr=1e-3, fused=True, neutral="stacked", channels_last=False):
        if neutral not in ("stacked", "separate"):
            raise ValueError(f"neutral must be 'stacked' or 'separate', got {neutral!r}")
        self.layers = list(model.layers)
        self.blocks = [tuple(b) for b in model.blocks]
        for b in range(1, len(self.blocks)):
            if self.blocks[b][0] != self.blocks[b - 1][1]:
                raise ValueError("TorchFFCNN needs consecutive, non-overlapping blocks")
        cfg = model.config
        self.loss_kind = cfg["loss"]
        if self.loss_kind not in ("ff", "symba", "cwc", "pvn"):
            raise ValueError(f"unsupported loss {self.loss_kind!r}")
        self.label_free = self.loss_kind in LABEL_FREE
        self.theta, self.alpha = float(cfg["threshold"]), float(cfg["alpha"])
        self.goodness_kind = cfg["goodness"]
        self.head_norm, self.head_norm_eps = cfg["norm"], float(cfg["norm_eps"])
        self.pvn_weight = 1.0 if self.loss_kind == "pvn" else float(cfg["pvn_weight"])
        self.label_value = float(cfg["label_value"])
        self.K = model.num_classes
        self.input_shape = tuple(model.input_shape)
        self.encoding = model.label_encoding
        if self.label_free:
            if self.encoding != "none":
                raise ValueError("the CwC/PvN losses need label_encoding 'none'")
        elif self.encoding not in ("onehot", "fourier", "embedding"):
            raise ValueError(f"unsupported label encoding {self.encoding!r}")
        C, H, W = self.input_shape
        self.patterns = fourier_patterns(self.K, H, W) if self.encoding == "fourier" else None
        # a trained label map per class, fed as an extra input channel (trained by block 0)
        self.embedding = None
        if self.encoding == "embedding":
            self.embedding = torch.tensor(np.array(model.label_embedding, dtype=np.float32)).requires_grad_(True)
        self.neutral = neutral
        self.channels_last = bool(channels_last)

        # parameters (copies of the fflib model's current values) and batch-norm buffers
        self.params = {}
        self.running = {}
        for i, layer in enumerate(self.layers):
            if layer.kind in ("conv2d", "linear", "batchnorm2d"):
                for name in ("weight", "bias"):
                    a = getattr(layer, name)
                    if a is not None:
                        t = torch.tensor(np.array(a, dtype=np.float32))
                        if self.channels_last and layer.kind == "conv2d" and name == "weight":
                            t = t.contiguous(memory_format=torch.channels_last)
                        self.params[(i, name)] = t.requires_grad_(True)
            if layer.kind == "batchnorm2d":
                self.running[i] = (torch.tensor(np.array(layer.running_mean, dtype=np.float32)),
                                   torch.tensor(np.array(layer.running_var, dtype=np.float32)))
        self.head_layers = list(model._head_layers) if model.has_head else []
        self.head_w = self.head_b = None
        if self.head_layers:
            self.head_w = torch.tensor(np.array(model.head_weight, dtype=np.float32)).requires_grad_(True)
            self.head_b = torch.tensor(np.array(model.head_bias, dtype=np.float32)).requires_grad_(True)

        adam = dict(lr=float(lr))
        if fused is not None:
            adam["fused"] = bool(fused)
        self.opts = []
        for first, last in self.blocks:
            ps = [p for (i, _), p in self.params.items() if first <= i < last]
            if first == 0 and self.embedding is not None:
                ps.append(self.embedding)
            self.opts.append(torch.optim.Adam(ps, **adam) if ps else None)
        self.head_opt = torch.optim.Adam([self.head_w, self.head_b], **adam) if self.head_layers else None

    @property
    def num_blocks(self):
        return len(self.blocks)

    # ------------------------------------------------------------------ pieces
    def encode(self, x, labels):
        """x (B, C, H, W) with labels (int64 tensor, or None for neutral) in the input."""
        if self.encoding == "onehot":
            C, H, W = self.input_shape
            out = x.clone().reshape(x.shape[0], C, H * W)
            if labels is None:
                out[:, :, :self.K] = self.label_value / self.K
            else:
                out[:, :, :self.K] = 0.0
                out[torch.arange(x.shape[0]), :, labels] = self.label_value
            return out.reshape(x.shape)
        if self.encoding == "fourier":
            if labels is None:
                wave = (self.label_value / self.K * self.patterns).sum(0)
                return x + wave
            return x + (self.label_value * self.patterns[labels])[:, None]
        if self.encoding == "embedding":
            C, H, W = self.input_shape
            if labels is None:
                maps = (self.embedding / self.K).sum(0).expand(x.shape[0], H * W)
            else:
                maps = self.embedding[labels]
            return torch.cat([x, maps.reshape(x.shape[0], 1, H, W)], dim=1)
        return x

    def _batchnorm(self, i, h, T):
        """Training-mode batch norm with the statistics of the first T rows."""
        layer = self.layers[i]
        w, b = self.params.get((i, "weight")), self.params.get((i, "bias"))
        rm, rv = self.running[i]
        if T == h.shape[0]:
            return F.batch_norm(h, rm, rv, w, b, True, layer.momentum, layer.eps)
        ht = h[:T]
        mean = ht.mean(dim=(0, 2, 3))
        var = ht.var(dim=(0, 2, 3), unbiased=False)
        with torch.no_grad():
            n = ht.numel() / ht.shape[1]
            rm.mul_(1 - layer.momentum).add_(layer.momentum * mean)
            rv.mul_(1 - layer.momentum).add_(layer.momentum * var * (n / max(n - 1, 1)))
        shape = (1, -1, 1, 1)
        out = (h - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + layer.eps)
        if w is not None:
            out = out * w.reshape(shape) + b.reshape(shape)
        return out

    def run_layer(self, i, h, T):
        layer = self.layers[i]
        kind = layer.kind
        if kind == "conv2d":
            return F.conv2d(h, self.params[(i, "weight")], self.params.get((i, "bias")), layer.stride,
                            layer.padding, 1, layer.groups)
        if kind == "batchnorm2d":
            return self._batchnorm(i, h, T)
        if kind == "relu":
            return F.relu(h)
        if kind == "maxpool2d":
            return F.max_pool2d(h, layer.kernel_size, layer.stride)
        if kind == "flatten":
            return h.reshape(h.shape[0], -1)
        if kind == "lennorm":
            flat = h.reshape(h.shape[0], -1)
            return length_normalise(flat, layer.norm, layer.eps).reshape(h.shape)
        if kind == "linear":
            return F.linear(h.reshape(h.shape[0], -1), self.params[(i, "weight")], self.params.get((i, "bias")))
        raise ValueError(f"unsupported layer kind {kind!r}")

    def block_loss(self, out, y, B):
        """The local loss of a block from its output's training rows."""
        if self.label_free:
            G = out[:B].reshape(B, self.K, -1).square().mean(dim=2)
            loss = 0.0
            if self.pvn_weight < 1.0:
                loss = (1.0 - self.pvn_weight) * F.cross_entropy(G, y)
            if self.pvn_weight > 0.0:
                gpos = G.gather(1, y[:, None])[:, 0]
                gneg = (G.sum(dim=1) - gpos) / (self.K - 1)
                loss = loss + self.pvn_weight * (F.softplus(self.theta - gpos) +
                                                 F.softplus(gneg - self.theta)).mean()
            return loss
        sq = out[:2 * B].reshape(2 * B, -1).square()
        g = sq.mean(dim=1) if self.goodness_kind == "mean" else sq.sum(dim=1)
        if self.loss_kind == "ff":
            return (F.softplus(self.theta - g[:B]) + F.softplus(g[B:] - self.theta)).mean()
        return F.softplus(-self.alpha * (g[:B] - g[B:])).mean()

    # ------------------------------------------------------------------ the step
    def step(self, x, y, neg=None, train_head=None):
        """One training step on x (B, C, H, W) float32, y (B,) int64 and, for FF/SymBa, the
        negative labels neg (B,).  Returns the per-block losses and the head loss (NumPy,
        num_blocks + 1 values; the head loss 0 without a head)."""
        x = torch.as_tensor(x).reshape((-1,) + self.input_shape)
        y = torch.as_tensor(y)
        B = x.shape[0]
        train_head = bool(self.head_layers) if train_head is None else bool(train_head)
        if self.label_free:
            rows, T, head_at, extra = x, B, 0, None
        else:
            neg = torch.as_tensor(neg)
            train_rows = torch.cat([self.encode(x, y), self.encode(x, neg)])
            neutral_rows = self.encode(x, None) if train_head else None
            T = 2 * B
            if neutral_rows is not None and self.neutral == "stacked":
                rows, extra, head_at = torch.cat([train_rows, neutral_rows]), None, T
            else:
                rows, extra, head_at = train_rows, neutral_rows, 0
        if self.channels_last:
            rows = rows.contiguous(memory_format=torch.channels_last)
            if extra is not None:
                extra = extra.contiguous(memory_format=torch.channels_last)
        for opt in self.opts:
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        losses = np.zeros(self.num_blocks + 1, np.float32)
        feats = {}
        h = rows
        for b, (first, last) in enumerate(self.blocks):
            if b > 0:   # block 0's input may carry the label embedding's graph
                h = h.detach()
            for i in range(first, last):
                h = self.run_layer(i, h, T)
                if train_head and i in self.head_layers and extra is None:
                    feats[i] = h[head_at:head_at + B].detach()
            loss = self.block_loss(h, y, B)
            loss.backward()
            losses[b] = float(loss.detach())
        if extra is not None:   # the neutral rows alone, no autograd (neutral="separate")
            with torch.no_grad():
                h = extra
                for i in range(len(self.layers)):
                    if self.layers[i].kind == "batchnorm2d":
                        raise NotImplementedError("neutral='separate' with batch norm")
                    h = self.run_layer(i, h, h.shape[0])
                    if i in self.head_layers:
                        feats[i] = h
                    if i >= self.head_layers[-1]:
                        break
        for opt in self.opts:
            if opt is not None:
                opt.step()
        if train_head:
            self.head_opt.zero_grad(set_to_none=True)
            feat = torch.cat([length_normalise(feats[i].reshape(B, -1), self.head_norm, self.head_norm_eps)
                              for i in self.head_layers], dim=1)
            hl = F.cross_entropy(F.linear(feat, self.head_w, self.head_b), y)
            hl.backward()
            self.head_opt.step()
            losses[-1] = float(hl.detach())
        return losses


# ---------------------------------------------------------------------------- self-test

def self_test(model, x, y, neg=None, steps=2, lr=1e-3, rtol=1e-4, **torch_kw):
    """Train ``model`` (fflib, fresh) and its TorchFFCNN copy for ``steps`` steps on the same
    batch; returns the per-step losses of both and the largest relative difference per step.
    Raises AssertionError if the first step's losses (a pure forward of the same weights)
    differ by more than rtol, or a later step's by more than 10 rtol (after Adam updates,
    float32 rounding of near-zero gradients is amplified).

    Use a batch of at least num_classes samples with the CwC/PvN losses: below that, fflib's
    train_step (at git c1bba01) writes the head's softmax probabilities over its own head
    gradient (ff_net.c passes ``net->logits + B*K`` as the probs buffer, which runs into
    ``dlogits`` when the workspace holds fewer than 2B rows), so the head losses part from the
    second step on.  The same happens to a smaller batch after a larger one (an epoch's last
    batch)."""
    import fflib
    fflib.Adam(model, lr=lr)
    tnet = TorchFFCNN(model, lr=lr, **torch_kw)
    x = np.ascontiguousarray(x, dtype=np.float32)
    flat = x.reshape(len(x), -1)
    out = {"fflib": [], "torch": [], "max_rel_diff": []}
    for s in range(steps):
        lf = np.asarray(model.train_step(flat, y, neg), dtype=np.float64)
        lt = tnet.step(x, y, neg).astype(np.float64)
        n = len(lf) if model.has_head else len(lf) - 1
        rel = np.abs(lf[:n] - lt[:n]) / np.maximum(np.abs(lf[:n]), 1e-12)
        out["fflib"].append(lf[:n].tolist())
        out["torch"].append(lt[:n].tolist())
        out["max_rel_diff"].append(float(rel.max()))
        tol = rtol if s == 0 else 10 * rtol
        assert np.allclose(lt[:n], lf[:n], rtol=tol, atol=1e-6), (
            f"step {s}: fflib losses {lf[:n]} vs torch {lt[:n]} (max rel diff {rel.max():.2e})")
    return out


if __name__ == "__main__":
    import fflib
    from fflib import models
    rng = np.random.default_rng(0)
    B = 16
    m = models.build("cnn", dataset="mnist", label_encoding="fourier", seed=1)
    x = rng.random((B, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, B)
    neg = (y + rng.integers(1, 10, B)) % 10
    print("mnist cnn", self_test(m, x, y, neg, steps=3)["max_rel_diff"])
    m = models.build("ff_tiny", seed=1)
    x = rng.random((B, 3, 32, 32), dtype=np.float32)
    print("ff_tiny", self_test(m, x, y, steps=3)["max_rel_diff"])
