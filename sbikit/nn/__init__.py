r"""Summary networks: :math:`(B, *) \to (B, F)` modules trained jointly with the flow.

Networks for sets (:class:`DeepSet`, :class:`SetTransformer`) and series
(:class:`GRUSummary`, :class:`ConvSummary`) also take ``mask=`` :math:`(B, M)`,
True for the members or time steps present.
"""

__all__ = ["MLP", "DeepSet", "SetTransformer", "GRUSummary", "ConvSummary"]

from .mlp import MLP
from .sequences import ConvSummary, GRUSummary
from .sets import DeepSet, SetTransformer
