"""Where the embeddings stage writes vectors: a small protocol (`base`), one module per sink
(`delta`: the lake's embeddings table) and a name -> sink registry (`registry`)."""

from embedding_assets.lib.sinks.base import VectorSink
from embedding_assets.lib.sinks.delta import DeltaSink
from embedding_assets.lib.sinks.registry import DEFAULT_SINK, SINKS, make_sink

__all__ = ["DEFAULT_SINK", "DeltaSink", "SINKS", "VectorSink", "make_sink"]
