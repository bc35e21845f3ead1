"""Sink name -> sink class. A new sink is one module in this package plus one line here."""

from __future__ import annotations

from embedding_assets.lib.sinks.base import VectorSink
from embedding_assets.lib.sinks.delta import DeltaSink

SINKS: dict[str, type] = {
    "delta": DeltaSink,
}
DEFAULT_SINK = "delta"


def make_sink(name: str, lake_root: str) -> VectorSink:
    """The sink called `name`, for the lake at `lake_root`."""
    try:
        return SINKS[name](lake_root)
    except KeyError:
        raise ValueError(f"unknown sink {name!r}: choose one of {sorted(SINKS)}") from None
