"""Sonic Pi's tutorial as programs: the code blocks of Debian's sonic-pi-server-doc.

The tutorial (CC BY-SA 4.0, Sam Aaron and contributors) is one HTML page whose
sections are `<h1 id="tutorial_item_N">2.1 - Your First Beeps</h1>` and whose code
blocks are `<pre><code>...</code></pre>` with HTML entities (`&gt;`). `extract_tutorial`
writes each distinct block, exactly as the tutorial shows it, as <out>/<name>.rb, and
index.json naming each file's section, so every program says where it came from.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path

from sonicpi_gen.folders import replace_dir

TUTORIAL_HTML = Path("/usr/share/doc/sonic-pi/tutorial/Sonic Pi - Tutorial.html")
TUTORIAL_LICENSE = "CC BY-SA 4.0"
INDEX = "index.json"


@dataclass
class Block:
    """One code block: file name (without .rb), its section, its place in the page, its text."""

    name: str  # s006_your_first_beeps_01
    section: str  # "2.1 - Your First Beeps"
    anchor: str  # "tutorial_item_6": <page>#<anchor> links to the section
    index: int  # 1-based, within the section
    code: str


class _BlockParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.blocks: list[tuple[str, str, str]] = []  # (section, anchor, code)
        self.section, self.anchor = "", ""
        self._in_h1 = self._in_pre = self._in_code = False
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "h1":
            self._in_h1, self._text = True, []
            self.anchor = dict(attrs).get("id") or self.anchor
        elif tag == "pre":
            self._in_pre = True
        elif tag == "code" and self._in_pre:
            self._in_code, self._text = True, []

    def handle_endtag(self, tag):
        if tag == "h1" and self._in_h1:
            self._in_h1 = False
            self.section = html.unescape("".join(self._text)).strip()
        elif tag == "code" and self._in_code:
            self._in_code = False
            self.blocks.append((self.section, self.anchor, html.unescape("".join(self._text))))
        elif tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._in_h1 or self._in_code:
            self._text.append(data)

    def handle_entityref(self, name):
        self.handle_data(f"&{name};")

    def handle_charref(self, name):
        self.handle_data(f"&#{name};")


def read_tutorial_blocks(html_path: Path = TUTORIAL_HTML) -> list[Block]:
    """Every code block of the tutorial page, in page order, with its section."""
    if not Path(html_path).exists():
        raise FileNotFoundError(f"no Sonic Pi tutorial at {html_path}: install Debian's "
                                "sonic-pi-server-doc (scripts/setup.sh does) or pass its path")
    parser = _BlockParser()
    parser.feed(Path(html_path).read_text(encoding="utf-8"))
    blocks, per_section = [], {}
    for section, anchor, code in parser.blocks:
        per_section[anchor] = per_section.get(anchor, 0) + 1
        blocks.append(Block(_block_name(anchor, section, per_section[anchor]), section, anchor,
                            per_section[anchor], code))
    return blocks


def _block_name(anchor: str, section: str, index: int) -> str:
    """s<NNN>_<title>_<k>: NNN is the section's place in the page (its anchor's number, unique
    even for the appendix's unnumbered sections), k the block's place in the section."""
    item = int(re.sub(r"\D", "", anchor) or 0)
    title = section.partition(" - ")[2] or section
    slug = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")[:40].rstrip("_")
    return f"s{item:03d}_{slug}_{index:02d}"


def extract_tutorial(out_dir: Path, html_path: Path = TUTORIAL_HTML) -> dict:
    """Write each distinct code block of the tutorial as <out_dir>/<name>.rb, plus index.json.

    A block whose text repeats an earlier block exactly is left out (it would be the same
    program twice); index.json counts them. The folder is written all at once. Returns
    the index: source page, licence, and per file its section and anchor.
    """
    blocks = read_tutorial_blocks(html_path)
    seen, kept, repeats = set(), [], 0
    for block in blocks:
        if block.code in seen:
            repeats += 1
            continue
        seen.add(block.code)
        kept.append(block)
    index = {
        "source": str(html_path), "package": "sonic-pi-server-doc", "license": TUTORIAL_LICENSE,
        "blocks": len(blocks), "repeats_left_out": repeats,
        "files": [{"file": f"{b.name}.rb", **{k: v for k, v in asdict(b).items() if k != "code"}}
                  for b in kept],
    }
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / INDEX).exists():
        raise ValueError(f"{out_dir} exists and is not a tutorial extraction (no {INDEX}); "
                         "choose another --out or empty it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for block in kept:
            (tmp / f"{block.name}.rb").write_bytes(block.code.encode())
        (tmp / INDEX).write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return index
