"""morphonet.files: atomic writes and checked reads that name the damaged file."""

import os

import pytest
import torch

from morphonet.files import (
    CorruptFileError,
    atomic_write,
    load_torch,
    read_checked,
    read_json,
    save_torch,
    write_checked,
    write_json,
)


def test_checked_round_trip_and_every_kind_of_damage(tmp_path):
    p = tmp_path / "a.bin"
    write_checked(p, b"payload bytes", "snapshot")
    assert read_checked(p, "snapshot") == b"payload bytes"
    raw = p.read_bytes()
    with pytest.raises(CorruptFileError, match=r"a\.bin: a snapshot file, expected a checkpoint"):
        read_checked(p, "checkpoint")
    p.write_bytes(raw[:-3])  # truncated
    with pytest.raises(CorruptFileError, match=r"a\.bin: truncated or padded: 10 bytes"):
        read_checked(p, "snapshot")
    flipped = bytearray(raw)
    flipped[-2] ^= 0x01
    p.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError, match=r"a\.bin: damaged: the SHA-256"):
        read_checked(p, "snapshot")
    p.write_bytes(b'{"a": 1}')
    with pytest.raises(CorruptFileError, match="not a morpho snapshot file"):
        read_checked(p, "snapshot")
    with pytest.raises(CorruptFileError, match=r"nope\.bin: missing"):
        read_checked(tmp_path / "nope.bin", "snapshot")
    assert issubclass(CorruptFileError, ValueError)


def test_torch_and_json_round_trips(tmp_path):
    obj = {"w": torch.arange(5.0), "n": 3, "s": "x"}
    save_torch(tmp_path / "c.pt", obj, "checkpoint")
    back = load_torch(tmp_path / "c.pt", "checkpoint")
    assert torch.equal(back["w"], obj["w"]) and back["n"] == 3 and back["s"] == "x"
    write_checked(tmp_path / "bad.pt", b"not a torch payload", "checkpoint")
    with pytest.raises(CorruptFileError, match="not a readable torch object"):
        load_torch(tmp_path / "bad.pt", "checkpoint")
    write_json(tmp_path / "i.json", [1, {"a": None}])
    assert read_json(tmp_path / "i.json") == [1, {"a": None}]
    (tmp_path / "i.json").write_text('[1, {"a": nu')
    with pytest.raises(CorruptFileError, match=r"i\.json: not valid JSON"):
        read_json(tmp_path / "i.json")


def test_atomic_write_never_leaves_half_a_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write(p, b"old")
    with pytest.raises(TypeError):
        atomic_write(p, "not bytes")  # the write fails midway
    assert p.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]  # no temporary file left behind
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's owner-only 0600


def test_append_after_a_line_cut_short_by_a_kill(tmp_path):
    """A resumed job appends to a log whose last line a kill cut short: the cut line is
    dropped, not glued to the new record (which would damage the log for every later read)."""
    from morphonet.files import append_record, read_records

    p = tmp_path / "runs.jsonl"
    append_record(p, {"a": 1})
    append_record(p, {"b": 2})
    p.write_bytes(p.read_bytes()[:-7])  # killed while writing the second line
    with pytest.warns(UserWarning, match="cut short"):
        assert read_records(p) == [{"a": 1}]
    append_record(p, {"c": 3})
    assert read_records(p) == [{"a": 1}, {"c": 3}]
    p.write_bytes(b'{"x"')  # cut short in the very first line
    append_record(p, {"d": 4})
    assert read_records(p) == [{"d": 4}]
