"""The shared participant ledger of the process tests (``ledger_file``)."""

from __future__ import annotations

from pathlib import Path

from ledger_file import whole_lines


def test_a_ledger_line_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    assert whole_lines(path) == []
    # What a reader can see while another process's os.write is under way.
    path.write_text('{"kind": "apply", "step": "A"}\n{"kind": "apply", "st')
    assert whole_lines(path) == [{"kind": "apply", "step": "A"}]
    with path.open("a") as ledger:
        ledger.write('ep": "B"}\n')
    assert whole_lines(path) == [{"kind": "apply", "step": "A"}, {"kind": "apply", "step": "B"}]
