"""Forward-Forward MLP training written in plain PyTorch.

This is the second oracle of fflib's C core (the first is fflib/reference.py) and the baseline
of benchmarks/bench_mlp.py.  It implements the same training step as
``FFModel.train_step`` for an MLP cut into one Linear+ReLU per block:

* rows: [x with the true label | x with the negative label | x with the neutral label]; a
  label is written into the first K features (one-hot of height ``label_value``; the neutral
  label is ``label_value / K`` everywhere); the neutral rows exist only when the head trains;
* block input: the length-normalised previous block output (and the normalised raw rows
  before block 0 when ``normalize_input``); L2: ``x / (||x|| + eps)``, RMS:
  ``x / sqrt(mean(x^2) + eps)`` (in fflib these are the LenNorm layers that ``fflib.mlp``
  puts before each Linear);
* block output ``a = relu(W h + b)``, goodness ``g = sum(a^2)`` (or the mean) per row over the
  positive and negative rows;
* local loss, averaged over the batch: FF ``softplus(theta - g_pos) + softplus(g_neg - theta)``
  or SymBa ``softplus(-alpha (g_pos - g_neg))``; gradients reach only this block's
  parameters; every layer has its own optimiser (torch.optim.Adam or SGD);
* the next block sees this block's output computed *before* this block's update;
* one-pass head: linear (F -> K) + softmax cross-entropy on the concatenated normalised
  outputs (``head_norm``, fflib's config ``norm``) of the head blocks (default blocks 2..L)
  for the neutral rows, its own optimiser.

Two ways to get the gradients, both plain PyTorch:
``grad="autograd"`` (``loss.backward()``), and ``grad="manual"``: the closed form
``dL/dz = 2 dL/dg a`` (the ReLU mask is implied because a = 0 where z <= 0), which is the
same arithmetic fflib does (the weight gradient uses only the 2B positive/negative rows).

The caller sets ``torch.set_num_threads``.  Everything is float32.
"""
import numpy as np
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------- pieces

def length_normalise(x, kind="l2", eps=1e-4):
    """Normalise each row of x (B, D): L2 ``x / (||x|| + eps)``, RMS, or ``"none"``."""
    if kind == "l2":
        return x * (1.0 / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps))
    if kind == "rms":
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)
    if kind == "none":
        return x
    raise ValueError(f"unknown norm {kind!r}")


def goodness_of(a, kind="sum"):
    """Goodness per row: sum (or mean) of the squared activities."""
    sq = a.square()
    return sq.sum(dim=1) if kind == "sum" else sq.mean(dim=1)


def ff_loss(gpos, gneg, theta):
    """FF loss: mean_b softplus(theta - gpos) + softplus(gneg - theta)."""
    return (F.softplus(theta - gpos) + F.softplus(gneg - theta)).mean()


def symba_loss(gpos, gneg, alpha):
    """SymBa loss: mean_b softplus(-alpha (gpos - gneg))."""
    return F.softplus(-alpha * (gpos - gneg)).mean()


def overlay_labels(x, labels, K, value):
    """x (B, D) with the first K features replaced by the label (labels None: neutral)."""
    out = x.clone()
    if labels is None:
        out[:, :K] = value / K
    else:
        out[:, :K] = 0.0
        out[torch.arange(out.shape[0]), labels] = value
    return out


def stack_rows(x, y, neg, K, value, neutral):
    """The training rows, stacked into one matrix: positive | negative (| neutral)."""
    B = x.shape[0]
    rows = x.repeat(3 if neutral else 2, 1)
    rows[:2 * B, :K] = 0.0
    rows[torch.arange(2 * B), torch.cat([y, neg])] = value
    if neutral:
        rows[2 * B:, :K] = value / K
    return rows


def _as_float_rows(x):
    t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not torch.is_tensor(x) else x)
    return t.reshape(t.shape[0], -1).to(torch.float32)


def _as_labels(y):
    return torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y).to(torch.int64).reshape(-1)


# ---------------------------------------------------------------------------- the model

class TorchFFMLP:
    """An FF MLP (one Linear+ReLU per block) trained like ``fflib.FFModel.train_step``.

    sizes: ``[784, 500, 100]``; ``head``: with the one-pass softmax head (reading the blocks
    in ``head_blocks``, default "auto" = blocks 2..L, or block 1 alone for a 1-block net).
    Optimiser settings (``optimizer="adam"`` or ``"sgd"``, ``lr``, ``betas``, ``eps``,
    ``momentum``, ``dampening``, ``nesterov``, ``weight_decay``, ``fused``) apply to every
    layer and to the head, each with its own optimiser instance.
    """

    def __init__(self, sizes, num_classes=10, threshold=2.0, goodness="sum", norm_eps=1e-4,
                 label_value=1.0, normalize_input=True, head=True, lr=1e-3, *, optimizer="adam",
                 betas=(0.9, 0.999), eps=1e-8, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, loss="ff", alpha=4.0, norm="l2", input_norm=None, head_norm=None,
                 head_norm_eps=None, head_blocks="auto", grad="autograd", fused=None, seed=None):
        if goodness not in ("sum", "mean"):
            raise ValueError(f"goodness must be 'sum' or 'mean', got {goodness!r}")
        if loss not in ("ff", "symba"):
            raise ValueError(f"loss must be 'ff' or 'symba', got {loss!r}")
        if grad not in ("autograd", "manual"):
            raise ValueError(f"grad must be 'autograd' or 'manual', got {grad!r}")
        self.sizes = [int(s) for s in sizes]
        self.K = int(num_classes)
        self.threshold, self.alpha = float(threshold), float(alpha)
        self.goodness_kind, self.loss_kind = goodness, loss
        self.norm, self.norm_eps = norm, float(norm_eps)
        self.input_norm = norm if input_norm is None else input_norm
        self.head_norm = norm if head_norm is None else head_norm
        self.head_norm_eps = self.norm_eps if head_norm_eps is None else float(head_norm_eps)
        self.label_value, self.normalize_input = float(label_value), bool(normalize_input)
        self.grad = grad
        self.opt_settings = dict(optimizer=optimizer, lr=float(lr), betas=tuple(betas), eps=float(eps),
                                 momentum=float(momentum), dampening=float(dampening),
                                 nesterov=bool(nesterov), weight_decay=float(weight_decay), fused=fused)
        if seed is not None:
            torch.manual_seed(seed)
        self.layers = [torch.nn.Linear(i, o) for i, o in zip(self.sizes[:-1], self.sizes[1:])]
        nb = len(self.layers)
        if not head:
            self.head_blocks = []
        elif head_blocks == "auto":
            self.head_blocks = list(range(1, nb)) if nb > 1 else [0]
        else:
            self.head_blocks = sorted(int(b) for b in head_blocks)
        self.head = None
        if self.head_blocks:
            feat = sum(self.sizes[b + 1] for b in self.head_blocks)
            self.head = torch.nn.Linear(feat, self.K)
        self.reset_optimizers()

    @property
    def num_blocks(self):
        return len(self.layers)

    # ------------------------------------------------------------------ optimisers
    def _make_optimizer(self, params):
        s = self.opt_settings
        extra = {} if s["fused"] is None else {"fused": s["fused"]}
        if s["optimizer"] == "adam":
            return torch.optim.Adam(params, lr=s["lr"], betas=s["betas"], eps=s["eps"],
                                    weight_decay=s["weight_decay"], **extra)
        if s["optimizer"] == "sgd":
            return torch.optim.SGD(params, lr=s["lr"], momentum=s["momentum"], dampening=s["dampening"],
                                   nesterov=s["nesterov"], weight_decay=s["weight_decay"], **extra)
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {s['optimizer']!r}")

    def reset_optimizers(self):
        """Fresh optimiser state for every layer and the head."""
        self.opts = [self._make_optimizer(list(layer.parameters())) for layer in self.layers]
        self.head_opt = self._make_optimizer(list(self.head.parameters())) if self.head else None

    # ------------------------------------------------------------------ fflib interop
    @classmethod
    def from_fflib(cls, model, **kwargs):
        """A TorchFFMLP with ``model``'s sizes, FF settings, head and current weights.
        ``model`` must be an MLP cut into one Linear (+ReLU) per block with LenNorm layers
        before the Linears (``fflib.mlp``).  ``kwargs``: optimiser settings (and anything else
        to override)."""
        from fflib.nn import Linear
        kinds = [l.kind for l in model.layers]
        lin = [l for l in model.layers if isinstance(l, Linear)]
        for first, last in model.blocks:
            if kinds[first:last].count("linear") != 1:
                raise ValueError("TorchFFMLP needs one Linear per block")
        if any(k not in ("linear", "relu", "lennorm") for k in kinds):
            raise ValueError(f"TorchFFMLP supports Linear, ReLU and LenNorm layers, got {kinds}")
        norms = [(l.norm, l.eps) for l in model.layers if l.kind == "lennorm"]
        if len(set(norms)) > 1:
            raise ValueError(f"TorchFFMLP needs one kind of LenNorm throughout, got {sorted(set(norms))}")
        first_linear = kinds.index("linear")
        normalize_input = "lennorm" in kinds[:first_linear]
        between = len(norms) - int(normalize_input)
        if between not in (0, len(lin) - 1):
            raise ValueError("TorchFFMLP needs a LenNorm before every Linear after the first, or none")
        norm, norm_eps = norms[0] if norms else ("none", 0.0)
        sizes = [lin[0].weight.shape[1]] + [l.weight.shape[0] for l in lin]
        cfg = model.config
        if cfg["loss"] not in ("ff", "symba"):
            raise ValueError(f"unsupported loss {cfg['loss']!r}")
        head_blocks = []
        if model.has_head:
            ends = [last for _, last in model.blocks]
            head_blocks = [ends.index(l + 1) for l in model._head_layers]
        args = dict(num_classes=model.num_classes, threshold=cfg["threshold"], goodness=cfg["goodness"],
                    norm=norm if between else "none", norm_eps=norm_eps, label_value=cfg["label_value"],
                    normalize_input=normalize_input, input_norm=norm, loss=cfg["loss"], alpha=cfg["alpha"],
                    head_norm=cfg["norm"], head_norm_eps=cfg["norm_eps"],
                    head=bool(head_blocks), head_blocks=head_blocks or "auto")
        args.update(kwargs)
        net = cls(sizes, **args)
        net.load_fflib(model)
        return net

    def load_fflib(self, model):
        """Copy the weights (and head) of an fflib FFModel MLP; resets the optimisers."""
        from fflib.nn import Linear
        lin = [l for l in model.layers if isinstance(l, Linear)]
        if len(lin) != len(self.layers):
            raise ValueError(f"the fflib model has {len(lin)} Linear layers, this net {len(self.layers)}")
        with torch.no_grad():
            for mine, theirs in zip(self.layers, lin):
                mine.weight.copy_(torch.from_numpy(np.array(theirs.weight)))
                mine.bias.copy_(torch.from_numpy(np.array(theirs.bias)))
            if self.head is not None:
                self.head.weight.copy_(torch.from_numpy(np.array(model.head_weight)))
                self.head.bias.copy_(torch.from_numpy(np.array(model.head_bias)))
        self.reset_optimizers()

    def state_arrays(self):
        """NumPy copies of every parameter: [(W, b) per layer] and (W, b) of the head or None."""
        layers = [(l.weight.detach().numpy().copy(), l.bias.detach().numpy().copy()) for l in self.layers]
        head = None
        if self.head is not None:
            head = (self.head.weight.detach().numpy().copy(), self.head.bias.detach().numpy().copy())
        return layers, head

    # ------------------------------------------------------------------ training
    def _normalise(self, x):
        """Between blocks."""
        return length_normalise(x, self.norm, self.norm_eps)

    def _normalise_input(self, rows):
        """Before block 0 (the raw rows with their labels)."""
        return length_normalise(rows, self.input_norm, self.norm_eps) if self.normalize_input else rows

    def _normalise_head(self, x):
        """The one-pass head's input features."""
        return length_normalise(x, self.head_norm, self.head_norm_eps)

    def _loss_and_dg(self, g, B):
        """The local loss of goodness g (2B,) and (for the manual path) dL/dg."""
        gpos, gneg = g[:B], g[B:]
        if self.loss_kind == "ff":
            zp, zn = self.threshold - gpos, gneg - self.threshold
            loss = (F.softplus(zp) + F.softplus(zn)).mean()
            dg = torch.cat([-torch.sigmoid(zp), torch.sigmoid(zn)]) / B
        else:
            z = -self.alpha * (gpos - gneg)
            loss = F.softplus(z).mean()
            s = torch.sigmoid(z) * (self.alpha / B)
            dg = torch.cat([-s, s])
        return loss, dg

    def _block_autograd(self, layer, h, B):
        """Forward all rows of h through one block; backward its local loss (autograd)."""
        a = F.relu(layer(h), inplace=True)
        g = goodness_of(a[:2 * B], self.goodness_kind)
        loss, _ = self._loss_and_dg(g, B)
        for p in layer.parameters():
            p.grad = None
        loss.backward()
        return a.detach(), float(loss.detach())

    @torch.no_grad()
    def _block_manual(self, layer, h, B):
        """The same as _block_autograd with the closed-form local gradient."""
        T = 2 * B
        a = torch.addmm(layer.bias, h, layer.weight.t()).clamp_min_(0.0)
        at = a[:T]
        g = goodness_of(at, self.goodness_kind)
        loss, dg = self._loss_and_dg(g, B)
        scale = 2.0 / at.shape[1] if self.goodness_kind == "mean" else 2.0
        dz = at * (dg * scale).unsqueeze(1)          # relu' is implied: at == 0 where z <= 0
        layer.weight.grad = dz.t() @ h[:T]
        layer.bias.grad = dz.sum(dim=0)
        return a, float(loss)

    def step(self, x, y, neg, train_head=None, update=True):
        """One FF training step on the minibatch x (B, D) with labels y and negative labels neg.
        Returns the per-block losses followed by the head loss (0 when the head does not train),
        as a float32 array like ``FFModel.train_step``.  With ``update=False`` the gradients are
        left in the parameters' ``.grad`` and nothing changes (like ``FFModel.compute_grads``)."""
        x, y, neg = _as_float_rows(x), _as_labels(y), _as_labels(neg)
        if train_head is None:
            train_head = self.head is not None
        if train_head and self.head is None:
            raise ValueError("train_head=True but the net has no head")
        B, nb = x.shape[0], self.num_blocks
        T = 2 * B
        losses = np.zeros(nb + 1, dtype=np.float32)
        with torch.no_grad():
            rows = stack_rows(x, y, neg, self.K, self.label_value, train_head)
            h = self._normalise_input(rows)
        feats = []
        block = self._block_autograd if self.grad == "autograd" else self._block_manual
        for b, (layer, opt) in enumerate(zip(self.layers, self.opts)):
            a, losses[b] = block(layer, h, B)
            with torch.no_grad():
                if train_head and b in self.head_blocks:
                    feats.append(self._normalise_head(a[T:]))
                if b + 1 < nb:
                    h = self._normalise(a)      # computed before this block's update
            if update:
                opt.step()
        if train_head:
            feat = feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)
            loss = F.cross_entropy(self.head(feat), y)
            self.head.weight.grad = self.head.bias.grad = None
            loss.backward()
            if update:
                self.head_opt.step()
            losses[nb] = float(loss.detach())
        return losses

    def grads(self):
        """The gradients left by the last step: [(dW, db) per layer], (dW, db) of the head."""
        layers = [(l.weight.grad.numpy().copy(), l.bias.grad.numpy().copy()) for l in self.layers]
        head = None
        if self.head is not None and self.head.weight.grad is not None:
            head = (self.head.weight.grad.numpy().copy(), self.head.bias.grad.numpy().copy())
        return layers, head

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def goodness(self, x, chunk=1000):
        """Multi-pass goodness (N, K, num_blocks): every block's goodness for every label."""
        x = _as_float_rows(x)
        N, K, nb = x.shape[0], self.K, self.num_blocks
        out = torch.empty(N, K, nb)
        labels = torch.arange(K)
        for s in range(0, N, chunk):
            xs = x[s:s + chunk]
            n = xs.shape[0]
            rows = overlay_labels(xs.repeat_interleave(K, dim=0), labels.repeat(n), K, self.label_value)
            h = self._normalise_input(rows)
            for b, layer in enumerate(self.layers):
                a = F.relu(layer(h))
                out[s:s + n, :, b] = goodness_of(a, self.goodness_kind).reshape(n, K)
                if b + 1 < nb:
                    h = self._normalise(a)
        return out.numpy()

    def predict_multipass(self, x, blocks=None):
        """argmax over labels of the goodness summed over ``blocks`` (default all)."""
        g = self.goodness(x)
        sel = list(range(self.num_blocks)) if blocks is None else list(blocks)
        return g[:, :, sel].sum(axis=2).argmax(axis=1)

    @torch.no_grad()
    def features(self, x):
        """The one-pass head's input (N, F): the concatenated normalised outputs of the head
        blocks for neutral-label inputs."""
        if self.head is None:
            raise ValueError("this net has no one-pass head")
        rows = overlay_labels(_as_float_rows(x), None, self.K, self.label_value)
        h = self._normalise_input(rows)
        feats = []
        for b, layer in enumerate(self.layers[:max(self.head_blocks) + 1]):
            a = F.relu(layer(h))
            if b in self.head_blocks:
                feats.append(self._normalise_head(a))
            h = self._normalise(a)
        return torch.cat(feats, dim=1)

    @torch.no_grad()
    def predict_proba(self, x, chunk=2000):
        """One-pass probabilities (N, K): the head's softmax for neutral-label inputs."""
        x = _as_float_rows(x)
        out = [torch.softmax(self.head(self.features(x[s:s + chunk])), dim=1)
               for s in range(0, x.shape[0], chunk)]
        return torch.cat(out).numpy()

    def predict_onepass(self, x):
        return self.predict_proba(x).argmax(axis=1)
