"""The data dir holds personal data (CRM records, keys): its owner alone may enter it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700


def make_private(data_dir: Path) -> bool:
    """Create the data dir (mode 0700), or take group and other access away from an
    existing one; return whether an existing one had to be tightened."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if not mode & 0o077:
        return False
    os.chmod(data_dir, mode & PRIVATE_DIR)
    return True
