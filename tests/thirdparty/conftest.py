"""`site/` stands for a third party's installed package: `tinybus` and its dist-info with
the `eventbus.adapters` entry point, found the way pip-installed adapters are."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "site"))
