"""Atomic file writes, shared by every stage: a killed job leaves the old file or the new one,
never half of one. No torch or pandas here, so figures and claims can use it too."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it into place.

    The temporary file keeps ``path``'s suffix so writers that pick a format from the name
    (matplotlib) still work, and is created by the writer itself so it gets the usual
    permissions (mkstemp's would be 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
