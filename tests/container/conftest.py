"""tests/container on sys.path: the format tests share their spec-level helpers (`layout`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
