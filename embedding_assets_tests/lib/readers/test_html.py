"""HTML pages: the visible text, with paragraph and line breaks."""

from __future__ import annotations

from pathlib import Path

from embedding_assets.lib.readers.html import html_to_text
from embedding_assets_tests.lib.readers.helpers import read, rejection, write


def test_html_edge_cases() -> None:
    html = html_to_text
    assert html("<head><meta charset='utf-8'>Implicit body<p>next") == "Implicit body\n\nnext"
    assert html("<div>a</div><div>b</div>") == "a\n\nb"
    assert html("<table><tr><td>1</td><td>2</td></tr><tr><td>3</td></tr></table>") == "1 2\n3"
    assert html("<p>&lt;tag&gt; &#x1F600; &nbsp;x</p>") == "<tag> \U0001f600 x"
    assert html("<pre>a\n  b</pre>") == "a\nb"
    assert html("<script>x</script><style>y</style>") == ""


def test_html_without_visible_text_is_empty(tmp_path: Path) -> None:
    write(tmp_path / "b" / "blank.html", "<html><head><title>t</title></head><body><script>1</script></body></html>")
    assert rejection(read(tmp_path / "b"), "blank.html").reason == "empty document (no text after decoding)"
