"""Encoders: documents and queries → token embeddings.

Import is cheap: torch, transformers and colpali-engine are imported only
when a model is loaded (``pip install 'pgmaxsim[models]'``, and
``colpali-engine`` with ``--no-deps`` for the ColVision families).
"""

from .base import Encoder, ItemError, describe_item, l2_normalise
from .inputs import PdfPage, load_image, render_pdf
from .registry import FAMILIES, load_encoder, resolve_family

__all__ = [
    "FAMILIES",
    "Encoder",
    "ItemError",
    "PdfPage",
    "describe_item",
    "l2_normalise",
    "load_encoder",
    "load_image",
    "render_pdf",
    "resolve_family",
]
