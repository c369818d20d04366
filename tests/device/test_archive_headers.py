"""Malformed archive headers are refused with the archive's own error, also under ``python -O``
(which strips ``assert`` statements: untrusted input is never checked with them)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from morphbox.device.packs.archive import (
    ARCHIVE_VERSION,
    MAGIC,
    SIGNATURE_BYTES,
    ArchiveError,
    peek_header,
)

HEADERS = [b"[]", b"{}", b'{"key_id": 7}', b'"text"', b"\xff\xfe not utf-8", b"{not json",
           b"[" * 5000 + b"]" * 5000, json.dumps({"key_id": None}).encode()]


def _archive(header: bytes) -> bytes:
    return (MAGIC + struct.pack("<HI", ARCHIVE_VERSION, len(header)) + header
            + bytes(SIGNATURE_BYTES))


@pytest.mark.parametrize("header", HEADERS)
def test_a_malformed_header_is_an_archive_error(header, tmp_path):
    import io
    with pytest.raises(ArchiveError, match="not valid JSON with a key_id") as err:
        peek_header(io.BytesIO(_archive(header)))
    assert err.value.code == "format"


def test_the_refusal_does_not_depend_on_assert(tmp_path):
    files = []
    for i, h in enumerate(HEADERS):
        f = tmp_path / f"h{i}.mbpack"
        f.write_bytes(_archive(h))
        files.append(str(f))
    code = ("import sys\n"
            "from morphbox.device.packs.archive import ArchiveError, peek_header\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            "        peek_header(open(name, 'rb'))\n"
            "    except ArchiveError as e:\n"
            "        if e.code != 'format': sys.exit(2)\n"
            "        continue\n"
            "    print('accepted', name); sys.exit(1)\n")
    res = subprocess.run([sys.executable, "-O", "-c", code, *files], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
