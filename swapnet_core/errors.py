"""Exception types of swapnet_core: each names what is wrong and where."""


class SwapNetError(Exception):
    """Base class of every error swapnet_core raises on purpose."""


class ModelRefError(SwapNetError, ValueError):
    """A model reference that cannot be resolved to a builder."""


class WeightsError(SwapNetError):
    """A weights file that is missing, unreadable or does not fit the model."""


class InputSpecError(SwapNetError, ValueError):
    """An --input spec that is neither an image file nor random:NxCxHxW."""


class BudgetError(SwapNetError, ValueError):
    """A budget that cannot be parsed or met."""


class BudgetTooSmallError(BudgetError):
    """The budget is below the minimum feasible for this model and plan."""

    def __init__(self, budget_bytes: int, minimum_bytes: int, detail: str = ""):
        self.budget_bytes = int(budget_bytes)
        self.minimum_bytes = int(minimum_bytes)
        from .sizes import format_bytes  # here: sizes raises BudgetError, so it imports this module

        msg = (f"budget {format_bytes(budget_bytes)} is below the minimum feasible "
               f"{format_bytes(minimum_bytes)} ({minimum_bytes} bytes)")
        super().__init__(msg + (f": {detail}" if detail else ""))


class WeightNotResidentError(SwapNetError, RuntimeError):
    """A weight was used while its block was swapped out (a path the conversion's trace never saw)."""


class StoreError(SwapNetError):
    """A block store that cannot be opened or read."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The path is not a block store."""


class StoreFormatError(StoreError):
    """The manifest is malformed or of an unsupported format version."""


class StoreTruncatedError(StoreError):
    """The weights file is shorter than the manifest says (`.unit`: the first unit it cuts, when known)."""

    def __init__(self, message: str, *, path: str | None = None, unit: str | None = None):
        self.path, self.unit = path, unit
        super().__init__(message)


class StoreCorruptError(StoreError):
    """A unit's bytes do not match the checksum recorded at conversion."""

    def __init__(self, path: str, unit: str, expected: str, actual: str):
        self.path, self.unit = path, unit
        super().__init__(f"{path}: unit '{unit}' is corrupt (checksum {actual}, expected {expected})")


class StoreMismatchError(StoreError):
    """The store's manifest and weights file, or the store and the model, do not belong together; also
    a store re-converted with another layout under a running SwapModel (which must be rebuilt)."""

