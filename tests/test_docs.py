"""The README and docs are for users and stay true: every generated block equals what its source gives
(docs/generate.py), the README is short and names no commits, and its links lead somewhere."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_blocks_match_their_sources():
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_readme_is_short_and_carries_no_history():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    commits = [word for word in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"[a-f]", word)
               and re.search(r"[0-9]", word)]
    assert commits == []
    assert not re.search(r"\b(round|before the fix)\b", text, re.I)


def test_the_readmes_links_lead_to_files_of_the_repository():
    for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name}: {target}"
