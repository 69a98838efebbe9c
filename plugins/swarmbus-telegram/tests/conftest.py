"""The telegram plugin's tests: ``mockbot`` (the loopback Bot API) is importable from them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
