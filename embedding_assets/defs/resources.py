"""The resource both domains share: where the landing area and the lake are, and the stage knobs.

Every field is optional. A field left unset takes its environment variable, read when a step or a
sensor tick runs (through `dg.EnvVar`, never when the definitions load), else the default the
README's table lists; each field's description in the UI names its variable and default. A value
set in code or run config wins over both.
"""

from typing import Callable, Optional, TypeVar

import dagster as dg
from pydantic import Field

from embedding_assets.lib.settings import ENV_VARS

T = TypeVar("T")


def described(variable: str) -> str:
    """A field description: what the knob does, and where its value comes from when unset."""
    default, meaning = ENV_VARS[variable]
    shown = f"`{default}`" if default else "none"
    return f"{meaning} Unset: the environment variable {variable} at run time, else {shown}."


def from_env(value: Optional[T], variable: str, parse: Callable[[str], T]) -> Optional[T]:
    """`value` if set, else `variable` read now through `dg.EnvVar`, else its documented default.

    An empty documented default gives None. A malformed value raises a ValueError naming the variable.
    """
    if value is not None:
        return value
    raw = (dg.EnvVar(variable).get_value() or "").strip() or ENV_VARS[variable][0]
    if raw == "":
        return None
    try:
        return parse(raw)
    except ValueError:
        raise ValueError(f"{variable}={raw!r} is not a valid {parse.__name__}") from None


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError(raw)
    return value


_fraction.__name__ = "fraction between 0 and 1"


class LakeResource(dg.ConfigurableResource):
    """The landing area, the Delta lake, and the knobs of the CPU stages (read by the sensor too)."""

    landing: Optional[str] = Field(default=None, description=described("EMBEDDING_LANDING"))
    lake: Optional[str] = Field(default=None, description=described("EMBEDDING_LAKE"))
    max_file_bytes: Optional[int] = Field(default=None, description=described("EMBEDDING_MAX_FILE_BYTES"))
    chunk_tokens: Optional[int] = Field(default=None, description=described("EMBEDDING_CHUNK_TOKENS"))
    chunk_overlap: Optional[int] = Field(default=None, description=described("EMBEDDING_CHUNK_OVERLAP"))
    commit_seconds: Optional[float] = Field(default=None, description=described("EMBEDDING_COMMIT_SECONDS"))
    settle_seconds: Optional[float] = Field(default=None, description=described("EMBEDDING_SETTLE_SECONDS"))
    max_reject_fraction: Optional[float] = Field(default=None, description=described("EMBEDDING_MAX_REJECT_FRACTION"))

    @property
    def landing_root(self) -> str:
        return from_env(self.landing, "EMBEDDING_LANDING", str)

    @property
    def lake_root(self) -> str:
        return from_env(self.lake, "EMBEDDING_LAKE", str)

    @property
    def file_cap(self) -> int:
        return from_env(self.max_file_bytes, "EMBEDDING_MAX_FILE_BYTES", int)

    @property
    def chunk_limit(self) -> Optional[int]:
        return from_env(self.chunk_tokens, "EMBEDDING_CHUNK_TOKENS", int)

    @property
    def overlap(self) -> int:
        return from_env(self.chunk_overlap, "EMBEDDING_CHUNK_OVERLAP", int)

    @property
    def commit_interval(self) -> float:
        return from_env(self.commit_seconds, "EMBEDDING_COMMIT_SECONDS", float)

    @property
    def settle_time(self) -> float:
        return from_env(self.settle_seconds, "EMBEDDING_SETTLE_SECONDS", float)

    @property
    def reject_threshold(self) -> float:
        return from_env(self.max_reject_fraction, "EMBEDDING_MAX_REJECT_FRACTION", _fraction)
