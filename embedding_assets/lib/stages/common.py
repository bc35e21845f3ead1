"""What every stage shares: the log callback type and the clock that stamps rows."""

from __future__ import annotations

import datetime as dt
from typing import Callable

Log = Callable[[str], None]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
