"""No raw user id in any output of the ingest, whatever shape the input is in.

Every malformed shape the parser knows gets user ids carrying the marker ``zq7``, which no
pseudonym (hex) can contain; every row of the parse, every file the job writes and every log line
(Encore's and Ray's) is searched for it.
"""

import io
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from encore.privacy.ids import pseudonymize
from encore.recsys.interactions import parse_file

MARKER = "zq7"
KEY = b"test-key"


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


GOOD = b"user,item,weight\nalice-zq7@example.com,a1,3\nbob-zq7@example.com,a2,1\n"
MALFORMED = {
    # No header row: the first record is taken for the header.
    "no_header.csv": b"carol-zq7@example.com,a1,3\ndan-zq7@example.com,a2,1\n",
    "no_header.tsv": b"carol-zq7@example.com\ta1\t3\n",
    # An unquoted comma in the item name shifts the user id out of the user column: one field too
    # many, or (a field missing too) the right count with the id where the weight should be.
    "shifted.csv": b"item,user,plays\nEarth, Wind & Fire,erin-zq7@example.com,3\nEarth, Wind,frank-zq7@example.com\n",
    # The id in the timestamp's place, with the right field count.
    "shifted_timestamp.csv": b"user,item,weight,timestamp\ngina-zq7@example.com,a1,3,hank-zq7@example.com\n",
    # Broken quoting: an unterminated quote, text after a closing quote, a quote in the last field.
    "quotes.csv": (
        b'user,item,weight\n"ivan-zq7@example.com,a1,3\njudy-zq7@example.com,"a1"x,3\n'
        b'kim-zq7@example.com,a1,3"\n"lee, zq7@example.com",a1,2\n'
    ),
    # Wrong field counts, too few and too many.
    "counts.csv": b"user,item,weight\nmallory-zq7@example.com,a1\nnina-zq7@example.com,a1,3,4,5\n",
    # Bytes that are not UTF-8: a latin-1 record, a stray byte, and a file that is UTF-16 throughout.
    "latin1.csv": "user,item,weight\nolga-zq7-é@example.com,a1,3\n".encode("latin-1"),
    "stray_byte.csv": b"user,item,weight\npeggy-zq7@example.com\xff,a1,3\n",
    "utf16.csv": "user,item,weight\nquinn-zq7@example.com,a1,3\n".encode("utf-16"),
    "bad_header_encoding.csv": b"rupert-zq7@example.com\xff,item,weight\nsybil-zq7@example.com,a1,3\n",
    # Parquet: the id in the weight column, user ids as column names (wide format), not Parquet at all.
    "wrong_types.parquet": _parquet(
        pa.table({"user": ["trent-zq7@example.com"], "item": ["a1"], "weight": ["uma-zq7@example.com"]})
    ),
    "wide.parquet": _parquet(pa.table({"victor-zq7@example.com": [1], "wendy-zq7@example.com": [2]})),
    "truncated.parquet": _parquet(pa.table({"user": ["xena-zq7@example.com"], "item": ["a"], "weight": [1]}))[:-20],
    "empty.csv": b"",
}


def test_malformed_input_never_shows_a_raw_id_and_keeps_what_it_can():
    reports = {}
    for name, data in {"good.csv": GOOD, **MALFORMED}.items():
        parsed = parse_file(data, name, KEY)
        assert MARKER not in parsed.to_csv(), name
        reports[name] = parsed
    assert (reports["good.csv"]["reason"] == "").all()
    assert all((reports[name]["reason"] != "").any() for name in MALFORMED)
    header_error = reports["no_header.csv"]["reason"].item()
    assert header_error.startswith("no_header.csv: header has no column for user, item, weight")
    assert "column 1: text, column 2: text, column 3: integer" in header_error
    assert "column 1: int64, column 2: int64" in reports["wide.parquet"]["reason"].item()

    shifted = reports["shifted.csv"].set_index("line")
    assert shifted["reason"].to_dict() == {2: "expected 3 fields, found 4", 3: "weight is not a number (found text)"}
    assert shifted.loc[2, "user"] == ""  # the user field cannot be located
    assert shifted.loc[3, "user"] == pseudonymize("Wind", KEY)  # the field in the user column, as it stands
    quotes = reports["quotes.csv"].set_index("line")["reason"].to_dict()
    assert quotes == {
        2: "cannot be split into fields (unexpected end of data)",
        3: "cannot be split into fields (',' expected after '\"')",
        4: "weight is not a number (found text)",
        5: "",
    }
    assert reports["quotes.csv"]["user"].iloc[-1] == pseudonymize("lee, zq7@example.com", KEY)
    assert reports["latin1.csv"]["reason"].tolist() == ["not valid UTF-8"]
    assert reports["stray_byte.csv"]["reason"].tolist() == ["not valid UTF-8"]
    assert reports["utf16.csv"]["reason"].item() == "utf16.csv: header line is not valid UTF-8"
    assert reports["truncated.parquet"]["reason"].item().startswith("truncated.parquet: not a readable Parquet file")
    assert reports["wrong_types.parquet"]["reason"].item() == "weight is not a number (found text)"


def _texts(path: Path) -> str:
    content = path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix == ".parquet":
        content += json.dumps(pq.read_table(path).to_pylist(), default=str)
    return content


def test_the_ingest_job_writes_and_logs_no_raw_id(ray_local, tmp_path, caplog):
    from encore.recsys.ingest import ingest
    from encore.recsys.interactions import SplitConfig

    (tmp_path / "input").mkdir()
    for name, data in {"good.csv": GOOD, **MALFORMED}.items():
        (tmp_path / "input" / name).write_bytes(data)
    with caplog.at_level(logging.INFO):
        summary = ingest(str(tmp_path / "input"), str(tmp_path / "dataset"), SplitConfig())

    assert summary["accepted"] == 3 and summary["rejected"] > len(MALFORMED)
    written = [path for path in (tmp_path / "dataset").rglob("*") if path.is_file()]
    session_logs = Path(ray_local._private.worker._global_node.get_session_dir_path()) / "logs"
    logs = [path for path in session_logs.rglob("*") if path.is_file()]
    assert any(path.name == "rejects.csv" for path in written) and logs
    for path in written + logs:
        assert MARKER not in _texts(path), f"raw user id in {path}"
    assert caplog.records and not any(MARKER in record.getMessage() for record in caplog.records)
