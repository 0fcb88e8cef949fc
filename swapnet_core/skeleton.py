"""Building a network's skeleton: its structure with every parameter and buffer on the meta device.

Under `torch.device("meta")` every tensor a constructor makes is meta, which fails for constructors
that compute with tensors (torchvision's RegNet reads widths back with .tolist(): "Cannot copy out of
meta tensor"). Those are built the way accelerate's init_empty_weights builds them: on the CPU, with
each parameter and buffer moved to meta as it is registered, so the constructor's own arithmetic
runs on real tensors and the weights never stay allocated.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn


@contextlib.contextmanager
def registered_on_meta():
    """While active, nn.Module.register_parameter/register_buffer (and attribute assignment, which
    calls them) put the tensor on the meta device right after registering it."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter_on_meta(module, name, param):
        register_parameter(module, name, param)
        param = module._parameters.get(name)
        if param is not None and param.device.type != "meta":
            extra = dict(vars(param))  # a Parameter subclass's own attributes survive the move
            moved = type(param)(param.to("meta"), requires_grad=param.requires_grad)
            vars(moved).update(extra)
            module._parameters[name] = moved

    def buffer_on_meta(module, name, tensor, persistent=True):
        register_buffer(module, name, tensor, persistent=persistent)
        if module._buffers.get(name) is not None:
            module._buffers[name] = module._buffers[name].to("meta")

    nn.Module.register_parameter, nn.Module.register_buffer = parameter_on_meta, buffer_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """The module `build` makes, with its parameters and buffers on meta: under the meta device where
    the constructor allows it (nothing is allocated), else with tensors moved as they are registered."""
    try:
        with torch.device("meta"):
            return build()
    except Exception:  # noqa: BLE001 - a constructor that computes with its tensors: the slower way
        pass
    with registered_on_meta():
        model = build()
    for module in model.modules():  # tensors set into the tables directly, bypassing registration
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is not None and t.device.type != "meta":
                    table[name] = (type(t)(t.to("meta"), requires_grad=t.requires_grad)
                                   if isinstance(t, nn.Parameter) else t.to("meta"))
    return model
