from __future__ import annotations

import os

POSTGRES_DSN = os.environ.get(
    "EVENTBUS_TEST_POSTGRES_URL", "postgresql://eventbus:eventbus@127.0.0.1:5432/eventbus"
)
