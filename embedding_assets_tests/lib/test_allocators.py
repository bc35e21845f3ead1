"""Allocator settings for streaming steps: applied once, an explicit environment setting wins, and
delta-rs' jemalloc setting is left to the process environment (Python cannot set it reliably)."""

import os
import subprocess
import sys


def test_streaming_allocator_settings_apply_once_and_yield_to_the_environment():
    code = (
        "import os, pyarrow as pa\n"
        "from embedding_assets.lib import lake\n"
        "from embedding_assets.lib.allocators import configure_for_streaming\n"
        "print(os.environ.get('_RJEM_MALLOC_CONF', 'unset'), configure_for_streaming(), configure_for_streaming())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "_RJEM_MALLOC_CONF")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out == ["unset", "system", "system"]  # importing the lake sets no allocator variable
    env.update(ARROW_DEFAULT_MEMORY_POOL="mimalloc", _RJEM_MALLOC_CONF="dirty_decay_ms:5")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out == ["dirty_decay_ms:5", "mimalloc", "mimalloc"]
