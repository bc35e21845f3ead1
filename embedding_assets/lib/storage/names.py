"""The one rule for batch names: a batch name is a landing folder, a partition key and a Delta predicate.

Letters, digits and . _ = - only, at most 128 characters, starting with a letter or digit, and no
'..'. The pattern is matched against the whole name (re.fullmatch), so nothing can trail it, not
even a newline.
"""

from __future__ import annotations

import re

BATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,127}")


def is_batch_name(name: str) -> bool:
    return isinstance(name, str) and BATCH_NAME.fullmatch(name) is not None and ".." not in name


def validate_batch(batch: str) -> str:
    """`batch` itself if it is a valid batch name, else ValueError saying what a batch name is."""
    if not is_batch_name(batch):
        raise ValueError(
            f"batch name {batch!r} is not allowed: a batch is one folder name of letters, digits and . _ = - "
            "(at most 128, starting with a letter or digit)"
        )
    return batch
