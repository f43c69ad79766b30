"""The README says what the code declares: its settings table is the declarations' own."""
from __future__ import annotations

import re
from pathlib import Path

from relance.commands.settings import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
TABLE = re.compile(r"<!-- settings table:[^\n]*-->\n(.*?)<!-- end of settings table -->", re.S)


def test_the_settings_table_is_generated_from_the_declarations():
    match = TABLE.search(README.read_text(encoding="utf-8"))
    assert match, "README.md has lost its settings-table markers"
    assert match.group(1) == markdown_table(), "run `relance settings --markdown` and paste it into README.md"


def test_every_setting_is_in_the_table_once():
    from foundation.settings import Settings

    rows = TABLE.search(README.read_text(encoding="utf-8")).group(1).splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == Settings.names()
