r"""The local potential: the model as a function of one flat parameter vector, batched over chains.

:math:`n\beta` (:func:`default_nbeta`), and the losses and gradients of C chains in one pass
(:class:`Potential`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import vmap

from sgld.restrict import Restrict, restrict_record, select_parameters
from sgld.source import DataSource

__all__ = ["LossFn", "Potential", "default_nbeta"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def default_nbeta(n: int) -> float:
    r"""The paper's inverse temperature :math:`n\beta = n/\log n` (``itemp = 1/log n``).

    Args:
        n: Number of training samples, at least 2.

    Returns:
        :math:`n/\log n`.

    Raises:
        ValueError: If ``n < 2``.

    >>> round(default_nbeta(1000), 3)
    144.765
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 for nbeta = n/log(n), got {n}")
    return n / math.log(n)

# Modules that act elementwise, so they apply unchanged to a (chains, batch, features) tensor.
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus, nn.Identity)


class Potential:
    r"""The model as a function of one flat parameter vector, batched over chains.

    The ``d`` trainable parameters are laid out as one vector so that a chain is a row of a
    (chains, d) tensor and noise, update and distances are single tensor operations. The model
    is evaluated on a private copy whose parameters are replaced by views into that vector: this
    costs no more than a plain training step (``torch.func.functional_call`` costs about twice
    as much on small models), and the caller's model is never modified.

    Several chains are evaluated in one forward pass batched over chains, and their gradients come
    from one ordinary backward pass of the sum of their losses (chain c's loss depends only on row
    c, so row c of that gradient is chain c's own): about 1.25x faster on CPU than
    ``vmap(grad_and_value)``, whose per-operator overhead dominates for small models. A model that
    is a chain of ``nn.Linear`` layers and elementwise activations (deep linear networks, MLPs)
    skips ``vmap`` in the forward pass too: each layer is one ``torch.baddbmm`` over the stacked
    chains. That path is used only after it reproduced the model's own output at a random point.

    Args:
        model: The model at :math:`w^*`; copied, never modified. Its trainable parameters, tied
            ones once, are the blocks of the vector, named as in ``model.named_parameters()``.
        loss_fn: ``loss_fn(output, target)``, the mean loss over a batch.
        device: Where to compute.
        restrict: The parameter tensors to sample (:mod:`sgld.restrict`); the others stay fixed at
            :math:`w^*` in the private copy (no gradient, noise or update) and are not in the
            vector. None: every trainable parameter.

    Raises:
        ValueError: If the model has no trainable parameters, or for a selection that
            :func:`~sgld.restrict.select_parameters` rejects.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, device: torch.device, restrict: Restrict = None) -> None:
        self.module = copy.deepcopy(model).to(device).eval()
        self.restrict = restrict_record(restrict)
        if restrict is not None:
            sampled = set(select_parameters(self.module, restrict))
            for name, p in self.module.named_parameters():
                p.requires_grad_(name in sampled)
        self.loss_fn = loss_fn
        self.shapes: list[torch.Size] = []
        self.slots: list[tuple[nn.Module, str, int]] = []
        first: dict[int, int] = {}
        values = []
        self.names: list[str] = []  # one per block of the vector, as in model.named_parameters()
        for prefix, module in self.module.named_modules():
            for name, p in list(module._parameters.items()):
                if p is None or not p.requires_grad:
                    continue
                if id(p) not in first:  # tied weights are one block of the vector
                    first[id(p)] = len(values)
                    values.append(p.detach())
                    self.names.append(f"{prefix}.{name}" if prefix else name)
                del module._parameters[name]
                self.slots.append((module, name, first[id(p)]))
        if not values:
            raise ValueError("model has no trainable parameters: nothing to sample")
        self.shapes = [v.shape for v in values]
        self.numels = [v.numel() for v in values]
        self.w_star = torch.cat([v.reshape(-1) for v in values])
        self.d = self.w_star.numel()
        # One chain lives in ``flat``, and the copy's parameters are leaves sharing its storage: a
        # step is then a training step (forward, backward) plus one concatenation of the gradients,
        # without re-slicing the vector into views every step.
        self.flat = self.w_star.clone()
        self._leaves = [nn.Parameter(t.view(s)) for t, s in zip(self.flat.split(self.numels), self.shapes, strict=True)]
        self._assign(self.w_star)
        self._vmap_loss = vmap(self.loss)
        self._chain_loss_fn = vmap(loss_fn)
        self.layers: list[tuple[nn.Module, int | None, int | None]] | None = None  # see verify_linear_layers
        # Set by sgld.start.probe when autograd gives NaN at w* where the loss is finite (a removable 0·∞,
        # e.g. the derivative of w⁰ at w = 0): NaN gradient entries are then taken as 0.
        self.nan_grad_to_zero = False

    def sampled(self) -> dict:
        """What the chains sample, for ``LLCResult``.

        Returns:
            ``restrict`` (the selection as given, None for all), ``sampled_parameters`` (the
            names of the vector's blocks) and ``num_sampled`` (d, the restricted posterior's dimension).
        """
        return {"restrict": self.restrict, "sampled_parameters": list(self.names), "num_sampled": self.d}

    def block_names(self, mask: Tensor) -> list[str]:
        """Names of the parameter blocks a mask touches.

        Args:
            mask: (d,) booleans over the flat vector.

        Returns:
            The names of the blocks with a True entry, in order.
        """
        return [name for name, block in zip(self.names, mask.split(self.numels), strict=True) if bool(block.any())]

    def _set(self, blocks: Sequence[Tensor]) -> None:
        # Straight into __dict__: these names are no longer registered parameters, and
        # nn.Module.__setattr__'s checks cost as much as a small layer's forward.
        for module, name, i in self.slots:
            module.__dict__[name] = blocks[i]

    def _assign(self, w: Tensor) -> None:
        self._set([t.view(s) for t, s in zip(w.split(self.numels), self.shapes, strict=True)])

    def start(self, num_chains: int) -> Tensor:
        """The parameters of C chains at w*.

        Args:
            num_chains: C.

        Returns:
            (C, d) parameters; a single chain is ``flat`` itself, so its steps copy nothing.
        """
        if num_chains == 1:
            self.flat.copy_(self.w_star)
            return self.flat.view(1, self.d)
        return self.w_star.expand(num_chains, self.d).clone()

    def _linear_layers(self) -> list[tuple[nn.Module, int | None, int | None]] | None:
        """The leaves of the model if it may be a chain of Linear layers and elementwise activations.

        Returns:
            (module, weight block, bias block) per leaf, in order; None if the model is not such a chain.
        """
        slot = {(id(module), name): i for module, name, i in self.slots}
        if any(True for _ in self.module.buffers()):
            return None  # state besides parameters: leave it to vmap
        layers = []
        for module in self.module.modules():
            if next(module.children(), None) is not None:
                continue
            if isinstance(module, nn.Linear):
                if module._parameters.get("bias") is not None:
                    return None  # a bias held fixed (not sampled): the batched path would drop it
                layers.append((module, slot.get((id(module), "weight")), slot.get((id(module), "bias"))))
            elif isinstance(module, _ELEMENTWISE):
                layers.append((module, None, None))
            else:
                return None
        if any(w is None for m, w, _ in layers if isinstance(m, nn.Linear)) or len(slot) != sum(
            (w is not None) + (b is not None) for _, w, b in layers
        ):
            return None  # a frozen Linear weight, or parameters outside the Linear layers
        return layers

    def verify_linear_layers(self, x: Tensor) -> None:
        """Use the Linear-chain path if the model is such a chain and it reproduces ``model(x)`` near w*.

        Args:
            x: A batch of inputs, whose shape and dtype the check copies.
        """
        self.layers = self._linear_layers() if x.ndim == 2 and x.is_floating_point() else None
        if self.layers is None:
            return
        gen = torch.Generator(device=self.w_star.device).manual_seed(0)
        scale = float(self.w_star.abs().mean()) + 1.0
        w = self.w_star + 0.1 * scale * torch.randn(self.d, generator=gen, device=self.w_star.device)
        x_check = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            self._assign(w)
            expected = self.module(x_check)
            self._assign(self.w_star)
            got = self._linear_forward(w[None], x_check[None])[0]
        if got.shape != expected.shape or not torch.allclose(
            got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())
        ):
            self.layers = None

    def _linear_forward(self, w: Tensor, x: Tensor) -> Tensor:
        """The Linear/activation chain on C chains at once.

        Args:
            w: (C, d) parameters.
            x: (C, m, features) inputs.

        Returns:
            (C, m, outputs) model outputs.
        """
        blocks = w.split(self.numels, dim=1)
        # Features first, h of shape (C, features, m), so that each layer is W h: the weight
        # gradients then come out of bmm already in the vector's (out, in) layout, with no copies.
        h = x.transpose(1, 2)
        for module, wi, bi in self.layers:
            if wi is None:
                h = module(h)
                continue
            weight = blocks[wi].view(-1, *self.shapes[wi])
            h = torch.bmm(weight, h) if bi is None else torch.baddbmm(blocks[bi].unsqueeze(2), weight, h)
        return h.transpose(1, 2)

    def loss(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """The mean loss of one parameter vector on one batch.

        Args:
            w: (d,) parameters.
            x: Inputs of one batch.
            y: Its targets.

        Returns:
            The scalar loss, differentiable in ``w``.
        """
        self._assign(w)
        return self.loss_fn(self.module(x), y)

    def chain_losses(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """The losses of C chains, each on its own batch.

        Args:
            w: (C, d) parameters.
            x: (C, m, ...) inputs.
            y: (C, m, ...) targets.

        Returns:
            (C,) mean losses, differentiable in ``w``.
        """
        if self.layers is not None and x.ndim == 3:
            return self._chain_loss_fn(self._linear_forward(w, x), y)
        return self._vmap_loss(w, x, y)

    def grad_value(self, w: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The gradients and losses of C chains, each on its own batch.

        Args:
            w: (C, d) parameters.
            x: (C, m, ...) inputs.
            y: (C, m, ...) targets.

        Returns:
            (C, d) gradients of the mean losses, and the (C,) losses.
        """
        if w.data_ptr() == self.flat.data_ptr():  # a run's single chain (see start): a training step
            self._set(self._leaves)
            with torch.enable_grad():
                value = self.loss_fn(self.module(x[0]), y[0])
                grads = torch.autograd.grad(value, self._leaves, allow_unused=True, materialize_grads=True)
            return self._finite(torch.cat([g.reshape(-1) for g in grads]).unsqueeze(0)), value.detach().unsqueeze(0)
        with torch.enable_grad():
            leaf = w.detach().requires_grad_()
            values = self.chain_losses(leaf, x, y)
            (g,) = torch.autograd.grad(values.sum(), leaf)
        return self._finite(g), values.detach()

    def _finite(self, g: Tensor) -> Tensor:
        # NaN entries as 0 in place, once probe found a removable 0·∞ at w*; else g untouched.
        return g.masked_fill_(g.isnan(), 0.0) if self.nan_grad_to_zero else g

    @torch.no_grad()
    def batch_loss(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """The losses of C chains, each on its own batch, without gradients.

        Args:
            w: (C, d) parameters.
            x: (C, m, ...) inputs.
            y: (C, m, ...) targets.

        Returns:
            (C,) mean losses.
        """
        if w.shape[0] == 1:
            return self.loss(w[0], x[0], y[0]).unsqueeze(0)
        return self.chain_losses(w, x, y)

    @torch.no_grad()
    def full_loss(self, w: Tensor, data: DataSource, batch_size: int) -> Tensor:
        """:math:`L_n` of C chains on the full data, in batches.

        Args:
            w: (C, d) parameters.
            data: The n samples.
            batch_size: Samples per forward pass.

        Returns:
            (C,) float64 full-data losses.
        """
        total = torch.zeros(w.shape[0], device=w.device, dtype=torch.float64)
        for idx in data.chunks(batch_size):
            x, y = data.batch(idx)
            x = x.expand(w.shape[0], *x.shape)
            y = y.expand(w.shape[0], *y.shape)
            total += self.chain_losses(w, x, y).double() * len(idx)
        return total / data.n

    def full_grad_value(self, w: Tensor, data: DataSource, batch_size: int) -> tuple[Tensor, Tensor]:
        """Full-data gradients and losses of C chains, in batches.

        Args:
            w: (C, d) parameters.
            data: The n samples.
            batch_size: Samples per forward pass.

        Returns:
            (C, d) gradients of :math:`L_n` and the (C,) float64 losses.
        """
        g_total = torch.zeros_like(w)
        v_total = torch.zeros(w.shape[0], device=w.device, dtype=torch.float64)
        for idx in data.chunks(batch_size):
            x, y = data.batch(idx)
            x = x.expand(w.shape[0], *x.shape)
            y = y.expand(w.shape[0], *y.shape)
            with torch.enable_grad():
                leaf = w.detach().requires_grad_()
                v = self.chain_losses(leaf, x, y)
                (g,) = torch.autograd.grad(v.sum(), leaf)
            g_total.add_(self._finite(g), alpha=len(idx) / data.n)
            v_total += v.detach().double() * (len(idx) / data.n)
        return g_total, v_total
