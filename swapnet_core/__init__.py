"""swapnet_core: run networks larger than the memory budget by swapping execution-ordered blocks.

No ROS import anywhere in this package.
"""

__version__ = "0.1.0"

from .errors import (BudgetError, BudgetTooSmallError, InputSpecError, ModelRefError, StoreCorruptError,  # noqa: E402
                     StoreError, StoreFormatError, StoreMismatchError, StoreNotFoundError, StoreTruncatedError,
                     SwapNetError, WeightNotResidentError, WeightsError)
from .compose import open_swapped, plan_for, profile_for  # noqa: E402
from .models import model_factory  # noqa: E402
from .adapters import output_adapter  # noqa: E402
from .plan import Plan, make_plan, minimum_budget, plan_greedy, plan_optimal, plan_uniform  # noqa: E402
from .profile import Profile, load_profile  # noqa: E402
from .runtime import SwapModel, SwapStats, load_resident  # noqa: E402
from .store import BlockStore, convert  # noqa: E402

__all__ = ["BlockStore", "convert", "model_factory", "output_adapter", "open_swapped", "plan_for", "profile_for", "SwapModel", "SwapStats", "load_resident", "Plan", "make_plan", "plan_greedy", "plan_optimal", "plan_uniform", "Profile", "load_profile",
           "minimum_budget", "SwapNetError", "BudgetError", "BudgetTooSmallError", "InputSpecError",
           "ModelRefError", "StoreError", "StoreCorruptError", "StoreFormatError", "StoreMismatchError",
           "StoreNotFoundError", "StoreTruncatedError", "WeightNotResidentError", "WeightsError"]
