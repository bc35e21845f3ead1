"""A demo corpus built offline from the Python standard library's own documentation."""

from __future__ import annotations

import importlib
import json
import os
import pydoc

MODULES = [
    "json", "csv", "pathlib", "argparse", "collections", "itertools", "functools", "datetime", "re",
    "logging", "sqlite3", "subprocess", "threading", "asyncio", "heapq", "statistics", "textwrap",
    "urllib.parse", "http.client", "zipfile", "tarfile", "shutil", "tempfile", "hashlib", "random",
    "string", "unittest", "dataclasses", "typing", "contextlib", "socket", "email.message",
]


def build_demo_corpus(out_dir: str, modules: list[str] | None = None, max_chars: int = 6_000) -> dict:
    """Writes one .txt per module (its pydoc page) and one .jsonl of function docstrings."""
    os.makedirs(out_dir, exist_ok=True)
    written, records = 0, 0
    with open(os.path.join(out_dir, "functions.jsonl"), "w", encoding="utf-8") as jsonl:
        for name in modules or MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            page = pydoc.render_doc(module, renderer=pydoc.plaintext)[:max_chars]
            with open(os.path.join(out_dir, f"{name}.txt"), "w", encoding="utf-8") as handle:
                handle.write(page)
            written += 1
            for attr in sorted(vars(module)):
                obj = getattr(module, attr)
                doc = getattr(obj, "__doc__", None)
                if attr.startswith("_") or not callable(obj) or not doc or getattr(obj, "__module__", None) != module.__name__:
                    continue
                jsonl.write(json.dumps({"id": f"{name}.{attr}", "text": f"{name}.{attr}\n\n{doc.strip()}"}) + "\n")
                records += 1
    return {"files": written + 1, "records": records, "path": out_dir}
