"""Replace one `## Title` section of a Markdown file in place (creating the file or section when missing), so
each benchmark regenerates only its own part of docs/results.md."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(path: Path, title: str, body: str) -> None:
    text = path.read_text() if path.exists() else "# Results\n"
    block = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
