"""The DB thread's journal (softswitch/db/spool.py) on real files in a temporary directory."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from softswitch.db.spool import CdrWrite, Delete, Record, Save, Spool, decode, encode, read
from softswitch.model.cdr import Disposition
from tests.unit.control.dbthread_cases import a_cdr, binding

ROOT = Path(__file__).resolve().parents[3]


def journals(directory: Path) -> list[Path]:
    return sorted(directory.glob("journal-*.jsonl"))


def test_records_round_trip_through_a_line() -> None:
    records: list[Record] = [
        Save(binding(1, path=None, user_agent="caf\u00e9 \udcff phone")),  # a surrogate escape
        Delete(("user2", "example.com", "sip:user2@192.0.2.3")),
        CdrWrite("0" * 32, a_cdr(3, answer=None, disposition=Disposition.BUSY, sip_code=486)),
    ]
    for seq, record in enumerate(records, 1):
        line = encode(seq, record)
        assert line.endswith("\n") and line.count("\n") == 1 and line.isascii()
        assert decode(line) == (seq, record)
    _, cdr_write = decode(encode(1, records[2]))
    assert isinstance(cdr_write, CdrWrite) and type(cdr_write.cdr.disposition) is Disposition


def test_a_cdr_with_a_disposition_the_database_will_refuse_is_still_journaled() -> None:
    record = CdrWrite("1" * 32, a_cdr(1, disposition="no-such-disposition"))
    assert decode(encode(7, record)) == (7, record)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"seq": 1, "op": "save"}', "not a journal record: 'binding'"),
        ('{"seq": "1", "op": "delete", "key": ["a", "b", "c"]}', "seq is not an integer"),
        ('{"seq": 1, "op": "rename"}', "unknown op 'rename'"),
        ('{"seq": 1, "op": "delete", "key": ["a", "b"]}', "not enough values to unpack"),
        ("[1, 2]", "not a journal record: list indices"),
    ],
)
def test_a_line_that_is_not_a_record_is_a_value_error(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("'", ".")):
        decode(line)


def test_append_writes_the_batch_and_clear_empties_the_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.leftovers() == [] and (tmp_path / "spool").is_dir()
    assert spool.append([]) is True and journals(tmp_path / "spool") == []  # created lazily
    batch: list[Record] = [Save(binding(1)), CdrWrite("a" * 32, a_cdr(1)), Delete(binding(2).key)]
    assert spool.append(batch) is True
    assert spool.append([CdrWrite("b" * 32, a_cdr(2))]) is True
    [path] = journals(tmp_path / "spool")
    assert read(path) == [*batch, CdrWrite("b" * 32, a_cdr(2))] and spool.records == 4
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert spool.clear() is True
    assert path.stat().st_size == 0 and spool.records == 0
    spool.append([Save(binding(3))])  # the same file, from its start
    assert journals(tmp_path / "spool") == [path] and read(path) == [Save(binding(3))]


def test_close_removes_an_empty_journal_and_keeps_one_with_pending_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([Save(binding(1))])
    spool.clear()
    spool.close()
    assert journals(tmp_path) == []
    spool = Spool(tmp_path)
    spool.append([Save(binding(1))])
    spool.close()
    [kept] = journals(tmp_path)
    assert read(kept) == [Save(binding(1))]


def test_restart_replaces_the_live_file_with_what_is_pending(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for cseq in range(1, 50):  # a re-REGISTER storm during an outage
        spool.append([Save(binding(1, cseq=cseq))])
    [old] = journals(tmp_path)
    assert spool.restart([Save(binding(1, cseq=49))]) is True
    [new] = journals(tmp_path)
    assert new != old and new.name > old.name  # names sort in creation order
    assert read(new) == [Save(binding(1, cseq=49))] and spool.records == 1
    spool.append([Delete(binding(1).key)])
    assert read(new) == [Save(binding(1, cseq=49)), Delete(binding(1).key)]


def test_leftovers_are_an_earlier_runs_files_oldest_first_in_sequence_order(
    tmp_path: Path,
) -> None:
    first = Spool(tmp_path)
    first.append([Save(binding(1)), Save(binding(2))])
    first.restart([Save(binding(2)), CdrWrite("c" * 32, a_cdr(1))])
    first.append([Delete(binding(2).key)])
    first.close()
    (tmp_path / "notes.txt").write_text("not a journal")
    older = tmp_path / "journal-00000000000000000001-1.jsonl"  # a crash between restart and remove
    older.write_text(encode(2, Delete(binding(9).key)) + encode(1, Save(binding(9))))
    found = Spool(tmp_path).leftovers()
    assert found[0] == older and len(found) == 2
    assert read(older) == [Save(binding(9)), Delete(binding(9).key)]  # by seq, not by line
    assert read(found[1]) == [
        Save(binding(2)),
        CdrWrite("c" * 32, a_cdr(1)),
        Delete(binding(2).key),
    ]


def test_a_truncated_last_record_is_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    spool = Spool(tmp_path)
    spool.append([Save(binding(1)), CdrWrite("d" * 32, a_cdr(1))])
    spool.close()
    [path] = journals(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-40])  # the crash came in the middle of the second record
    with caplog.at_level(logging.WARNING, logger="softswitch.db"):
        assert read(path) == [Save(binding(1))]
    assert f"journal {path} line 2: truncated last record skipped" in caplog.text
    path.write_bytes(b"\x00garbage\n" + whole)  # a damaged line in the middle
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="softswitch.db"):
        assert read(path) == [Save(binding(1)), CdrWrite("d" * 32, a_cdr(1))]
    assert "line 1: unreadable record skipped" in caplog.text


def test_a_journal_held_by_a_running_process_is_not_a_leftover(tmp_path: Path, caplog) -> None:
    live = Spool(tmp_path)
    live.append([Save(binding(1))])
    with caplog.at_level(logging.WARNING, logger="softswitch.db"):
        assert Spool(tmp_path).leftovers() == []
    assert "belongs to a running process" in caplog.text
    child = subprocess.run(  # a process killed with its journal open: the lock is gone
        [
            sys.executable,
            "-c",
            "import os, sys; from softswitch.db.spool import Spool, Delete;"
            "s = Spool(sys.argv[1]); s.leftovers();"
            "s.append([Delete(('a', 'b', 'c'))]); os._exit(9)",
            str(tmp_path / "child"),
        ],
        cwd=ROOT,
        timeout=30,
    )
    assert child.returncode == 9
    [left] = Spool(tmp_path / "child").leftovers()
    assert read(left) == [Delete(("a", "b", "c"))]


def test_an_unwritable_directory_switches_the_journal_off(tmp_path: Path) -> None:
    """sysfs refuses new directories to everyone, root included (CI runs as
    root, who may write into any directory whatever its mode)."""
    spool = Spool("/sys/softswitch-test-spool")
    assert spool.leftovers() == [] and not spool.active
    assert spool.error in (
        "/sys/softswitch-test-spool: Permission denied",
        "/sys/softswitch-test-spool: Operation not permitted",
    )
    assert spool.append([Save(binding(1))]) is False


def test_a_write_error_switches_the_journal_off_and_removes_the_stale_file(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path)
    spool.append([Save(binding(1))])
    [path] = journals(tmp_path)
    # /dev/full: every write(2) fails with ENOSPC, what a full disk does.
    real = spool._fd
    spool._fd = os.open("/dev/full", os.O_WRONLY)
    os.close(real)  # type: ignore[arg-type]
    assert spool.append([Delete(binding(1).key)]) is False
    assert not spool.active and spool.error is not None and "No space left" in spool.error
    assert spool.append([Save(binding(2))]) is False
    # the file holds a save that later, unjournaled writes may undo: gone
    assert not path.exists() and journals(tmp_path) == []
    assert spool.restart([Save(binding(2))]) is True and spool.active
    [fresh] = journals(tmp_path)
    assert read(fresh) == [Save(binding(2))]


def test_a_directory_that_is_a_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "spool").write_text("")
    spool = Spool(tmp_path / "spool")
    assert spool.leftovers() == [] and not spool.active
    assert spool.error is not None and spool.error.endswith("File exists")
    assert spool.restart([]) is False and spool.error.endswith("File exists")
    (tmp_path / "spool").unlink()  # the operator mends it: the next restart works
    assert spool.restart([Save(binding(1))]) is True and spool.active
    assert spool.append([Save(binding(2))]) is True
