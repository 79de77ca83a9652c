"""``flowwatch health SERVICE``: exit 0 when the service is working, 1 when not, with the reason.

The check lives in the kernel (:mod:`shared.health`) and imports only the standard library, so it
costs little: Docker runs it every 15 s in every service container (``python -m shared.health``, the
same code without this dispatcher).
"""

from __future__ import annotations

from shared.health import main

__all__ = ["main"]
