"""From a store and a budget to a running model: profile (cached) -> plan -> SwapModel, in one place.

The CLI, the scheduler and the library user all go through here, so a budget, a plan kind and an
example input are resolved the same way everywhere. Imports run one way: the store format, the
reader and arena, the runtime (which takes a finished Plan), the profiler (which drives the
runtime), the planner (which reads the store and profiles), and this module on top.
"""

from __future__ import annotations

import torch

from .plan import Plan, make_plan
from .profile import Profile, load_profile
from .memory import ArenaRegion
from .runtime import SwapModel
from .sizes import parse_size
from .store import BlockStore


def profile_for(store: BlockStore, budget_bytes: int | str, *, example_input: torch.Tensor | None = None,
                device: str | torch.device = "cpu", io: str = "direct", refresh: bool = False) -> Profile:
    """The store's profile for this input (its conversion's example by default), device and io mode:
    measured on first use within `budget_bytes` of weight memory, then read from profile.json."""
    x = example_input if example_input is not None else store.make_input()
    return load_profile(store, x, torch.device(device), io, refresh=refresh,
                        budget_bytes=parse_size(budget_bytes, of=store.total_bytes))


def plan_for(store: BlockStore, budget_bytes: int | str, kind: str = "optimal", *,
             example_input: torch.Tensor | None = None, device: str | torch.device = "cpu", io: str = "direct",
             prefetch: int = 1, activation_reserve: int | str = 0, profile: Profile | None = None) -> tuple[Plan, Profile]:
    """The plan of `kind` for `budget_bytes` ('1/4', '96MB', bytes), and the profile its prediction
    comes from (profile_for's, unless one is given)."""
    budget = parse_size(budget_bytes, of=store.total_bytes)
    reserve = activation_reserve if type(activation_reserve) is int and activation_reserve == 0 else \
        parse_size(activation_reserve, of=store.total_bytes)
    if profile is None:
        profile = profile_for(store, budget, example_input=example_input, device=device, io=io)
    return make_plan(store, budget, kind, profile, prefetch, reserve), profile


def open_swapped(store: BlockStore | str, budget_bytes: int | str, *, plan: Plan | str = "optimal",
                 device: str | torch.device = "cpu", io: str = "direct", prefetch: int = 1, verify: str = "first",
                 example_input: torch.Tensor | None = None, activation_reserve: int | str = 0,
                 arena: ArenaRegion | None = None) -> SwapModel:
    """A SwapModel of `store` within `budget_bytes`: `plan` is a Plan, or the kind to make
    ("optimal" profiles once per input shape and caches it next to the store)."""
    store = store if isinstance(store, BlockStore) else BlockStore(store)
    parse_size(budget_bytes, of=store.total_bytes)  # refused as usual, even beside a finished Plan
    if io == "mmap" and torch.device(device).type != "cpu":
        raise ValueError("io='mmap' computes on mapped file pages, which only the CPU can; use io='direct'")
    if not isinstance(plan, Plan):
        plan, _profile = plan_for(store, budget_bytes, plan, example_input=example_input, device=device, io=io,
                                  prefetch=prefetch, activation_reserve=activation_reserve)
    return SwapModel(store, plan, device=device, io=io, verify=verify, arena=arena)
