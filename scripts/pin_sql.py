"""Re-pin the sha256 of SQL files named in migration revisions (for UNRELEASED revisions only).

    python scripts/pin_sql.py 0002        # re-pin the files named in migrations/versions/0002_*.py

A released revision's files never change; tests/test_migrations.py checks every pin.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for rev in argv:
        for path in sorted((ROOT / "migrations" / "versions").glob(f"{rev}_*.py")):
            text = path.read_text()

            def repin(m: re.Match[str]) -> str:
                digest = hashlib.sha256((ROOT / "sql" / m.group(2)).read_bytes()).hexdigest()
                return f'{m.group(1)}"{m.group(2)}"{m.group(3)}"{digest}"'

            new = re.sub(r'(\(\s*|\s)"([\w.\-]+\.sql)"(\s*,\s*)"[0-9a-f]{64}"', repin, text)
            if new != text:
                path.write_text(new)
                print(f"re-pinned {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
