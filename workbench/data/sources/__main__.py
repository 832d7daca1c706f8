"""``python -m workbench.data.sources convert --source minari PATH --out ROOT`` (:mod:`.convert`)."""

from __future__ import annotations

import sys

from workbench.data.sources.convert import main

if __name__ == "__main__":
    sys.exit(main())
