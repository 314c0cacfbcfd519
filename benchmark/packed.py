"""Packs of models: R single-run models trained as one computation.

A ``PackedModel`` stacks the parameters of R models of one architecture along a leading
run dimension (a parameter of shape S becomes (R, *S)) and runs them on inputs of shape
(R, n, ...) to outputs of shape (R, n, outputs). Runs never mix: every operation acts on
each run's slice alone, so the sum of the runs' losses differentiates into each run's own
gradient, and one backward pass serves the whole pack.

Each run is initialised by building its own single-run model (``invbench.models``) from
its own seed and copying its parameters in, so a run starts from the same weights alone or
in a pack, and ``run_state_dict(r)`` gives run r back in the single model's own format.

The layers of the registered models (linear, MLP) run as batched matrix products whose
result for one run does not depend on how many runs share the product (``packed_linear``);
other models (the CNN, plugins) run through ``torch.func.vmap``, which is as general but
leaves the kernels' choice to torch.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (R, n, in) times weight (R, out, in)^T plus bias (R, out): (R, n, out).

    A batched product whose every run is one small matrix product of the same shape
    whatever R is, so a run's result does not depend on its pack-mates. With one output
    BLAS would switch to a matrix-vector kernel (whose sums round differently from the
    matrix-matrix kernel), so a zero row is added to the weight. A linear model's layer
    (few inputs, few outputs) is computed as weight @ x^T, the shape batched BLAS runs
    fastest; a layer inside a network as x @ weight^T, which keeps the gradients that flow
    back into the layers below contiguous (their products then round alike for any R).
    The choice depends on the layer's shape, never on R.
    """
    out_features = weight.shape[1]
    if out_features < 2:
        weight = torch.cat([weight, weight.new_zeros(weight.shape[0], 2 - out_features, weight.shape[2])], 1)
        if bias is not None:
            bias = torch.cat([bias, bias.new_zeros(bias.shape[0], 2 - out_features)], 1)
    if out_features < NARROW and weight.shape[2] < NARROW_INPUTS:
        out = torch.bmm(weight, x.transpose(1, 2)).transpose(1, 2)
        out = out if bias is None else out + bias.unsqueeze(1)
    elif bias is None:
        out = torch.bmm(x, weight.transpose(1, 2))
    else:
        out = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
    return out[..., :out_features] if out_features < 2 else out


NARROW = 8  # fewer outputs than this, and
NARROW_INPUTS = 64  # fewer inputs than this: the weight @ x^T form


class PackedModel(nn.Module):
    """R models of one architecture with stacked parameters (see the module docstring)."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("a pack needs at least one model")
        self.runs = len(models)
        self.template = copy.deepcopy(models[0])  # run r's single-model view (extras, checkpoints)
        self.names = [name for name, _ in models[0].named_parameters()]
        self.buffer_names = [name for name, _ in models[0].named_buffers()]
        for model in models[1:]:
            if [n for n, _ in model.named_parameters()] != self.names:
                raise ValueError("models of a pack must share one architecture")
        for name in self.names:
            stacked = torch.stack([model.get_parameter(name).detach() for model in models])
            self.register_parameter(_attr(name), nn.Parameter(stacked.clone()))
        for name in self.buffer_names:
            self.register_buffer(_attr(name), torch.stack([model.get_buffer(name) for model in models]).clone())

    # The stacked tensors, by the single model's names --------------------------------------

    def packed_parameters(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, _attr(name)) for name in self.names}

    def packed_buffers(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, _attr(name)) for name in self.buffer_names}

    def run_state_dict(self, run: int) -> dict[str, torch.Tensor]:
        """Run ``run``'s parameters and buffers as the single model's state_dict."""
        state = {name: tensor[run].detach().clone() for name, tensor in self.packed_parameters().items()}
        state.update({name: tensor[run].clone() for name, tensor in self.packed_buffers().items()})
        return state

    def check_run_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Raise ValueError unless ``state`` is a single model's state_dict of this architecture."""
        expected = {**self.packed_parameters(), **self.packed_buffers()}
        if set(state) != set(expected):
            missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise ValueError(f"model state does not fit: missing {missing}, unexpected {extra}")
        for name, tensor in expected.items():
            if tuple(state[name].shape) != tuple(tensor.shape[1:]):
                raise ValueError(f"model state {name} has shape {tuple(state[name].shape)}, "
                                 f"expected {tuple(tensor.shape[1:])}")

    @torch.no_grad()
    def load_run_state_dict(self, run: int, state: Mapping[str, torch.Tensor]) -> None:
        self.check_run_state(state)
        for name, tensor in {**self.packed_parameters(), **self.packed_buffers()}.items():
            tensor[run].copy_(state[name])

    def single(self, run: int) -> nn.Module:
        """A single model holding run ``run``'s current weights (for per-run extra metrics)."""
        self.template.load_state_dict(self.run_state_dict(run))
        return self.template

    # Forward ---------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (R, n, ...) -> outputs (R, n, out)."""
        packed = getattr(self.template, "forward_packed", None)
        if packed is not None:
            return packed(self.packed_parameters(), x)
        return self._vmap(self.template, "", x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The featurizer's output (R, n, features): what feature-level penalties compare."""
        packed = getattr(self.template, "features_packed", None)
        if packed is not None:
            return packed(self.packed_parameters(), x)
        return self._vmap(self._submodule("featurizer"), "featurizer.", x)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """The classifier on features z (R, n, features): (R, n, out)."""
        packed = getattr(self.template, "classify_packed", None)
        if packed is not None:
            return packed(self.packed_parameters(), z)
        return self._vmap(self._submodule("classifier"), "classifier.", z)

    def _submodule(self, name: str) -> nn.Module:
        module = getattr(self.template, name, None)
        if not isinstance(module, nn.Module):
            raise NotImplementedError(f"model {type(self.template).__name__} has no {name} submodule; "
                                      f"a method that needs features needs a model that has one")
        return module

    def _vmap(self, module: nn.Module, prefix: str, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, vmap

        params = {n[len(prefix):]: t for n, t in self.packed_parameters().items() if n.startswith(prefix)}
        buffers = {n[len(prefix):]: t for n, t in self.packed_buffers().items() if n.startswith(prefix)}

        def call(p, b, inputs):
            return functional_call(module, (p, b), (inputs,))

        return vmap(call)(params, buffers, x)


def _attr(name: str) -> str:
    return "p__" + name.replace(".", "__")
