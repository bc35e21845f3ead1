"""The core of embedding_assets, with no Dagster imports.

`encoders` (the engine and its backends) imports only numpy, tokenizers and, when a model loads,
torch or onnxruntime, so a GPU node or a benchmark box with torch, transformers and pyarrow can
run it. The rest (readers, storage, lake, stages, sinks) adds pyarrow and deltalake. See README
"Architecture" for the layout.
"""
