"""Documents as the text a text-only model reads."""

from __future__ import annotations

import io
import logging

from pypdf import PdfReader
from pypdf.errors import PyPdfError

# pypdf reports recoverable oddities of a PDF as warnings; they are not the client's problem.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def pdf_text(data: bytes) -> str | None:
    """The text of every page, pages a blank line apart; None if the PDF cannot be read."""
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, OSError):
        return None
    return "\n\n".join(p.strip() for p in pages if p.strip())
