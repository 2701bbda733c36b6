r"""Diagnostics: pure functions over samples, tensors and posteriors."""

__all__ = ["c2st"]

from .c2st import c2st
