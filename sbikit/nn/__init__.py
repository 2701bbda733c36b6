r"""Summary networks: :math:`(B, *) \to (B, F)` modules trained jointly with the flow."""

__all__ = ["MLP"]

from .mlp import MLP
