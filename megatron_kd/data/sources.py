"""Where `mkd data preprocess` reads documents from, streamed one record at a time.

Inputs (files, directories or globs, in the order given; a glob's matches sorted):
- `.jsonl` / `.json` (one JSON object a line), optionally `.gz` or `.zst` compressed;
- `.txt` (one document per non-empty line), optionally `.gz` or `.zst` compressed;
- `.parquet` files (FineWeb-style shards), read one row group batch at a time;
- Arrow: a `datasets` directory written by `Dataset.save_to_disk` (state.json + `.arrow` files) or
  a single `.arrow` file (IPC stream or file format).

A record's text is the `key` field/column. As in Megatron-LM's tools/preprocess_data.py a value
may be a list of strings (pre-split sentences), and an empty string is an empty document.

Every input is checked before anything is tokenized or written (`open_sources`): it exists, a
glob matches something, a Parquet/Arrow input opens, has the column and holds rows. A JSONL or
text input is checked as it streams (a bad line is an error naming file:line; an input that
yields no document is an error too): the caller removes its partial output.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from megatron_kd.console import first_line
from megatron_kd.errors import ConfigError

TEXT_SUFFIXES = (".jsonl", ".json", ".txt")
COMPRESSIONS = ("", ".gz", ".zst")
BATCH_ROWS = 1024  # rows read from a Parquet/Arrow input at a time (memory bound)


@dataclass
class Source:
    path: Path
    kind: str  # jsonl | txt | parquet | arrow
    size: int  # bytes on disk (the progress line's ETA weighs inputs by it)
    rows: int | None = None  # known up front for Parquet/Arrow
    files: tuple[Path, ...] = ()  # an Arrow directory's .arrow files

    @property
    def compression(self) -> str:
        return next((c for c in COMPRESSIONS[1:] if self.path.name.endswith(c)), "")


def _kind(path: Path) -> str | None:
    name = path.name
    for c in COMPRESSIONS:
        for s in TEXT_SUFFIXES:
            if name.endswith(s + c):
                return "txt" if s == ".txt" else "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".arrow"):
        return "arrow"
    return None


def _expand(spec: str) -> list[Path]:
    if any(ch in spec for ch in "*?["):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise ConfigError(f"input glob '{spec}' matches no file; check the pattern (quote it so the "
                              "shell does not expand it)")
        return [Path(m) for m in matches]
    path = Path(spec)
    if not path.exists():
        raise ConfigError(f"input '{spec}' not found")
    return [path]


def open_sources(inputs: list[str | Path], key: str) -> list[Source]:
    """Every input, expanded and checked (see the module doc); in order."""
    out = []
    for spec in inputs:
        for path in _expand(str(spec)):
            out.append(_check(path, key))
    if not out:
        raise ConfigError("no input given; pass --input FILE|DIR|GLOB ...")
    return out


def _check(path: Path, key: str) -> Source:
    if path.is_dir():
        return _arrow_dir(path, key)
    kind = _kind(path)
    if kind is None:
        raise ConfigError(f"input '{path}' has an unknown type; give .jsonl/.json/.txt (optionally .gz or "
                          ".zst), .parquet, .arrow or a `datasets` directory saved with save_to_disk")
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"input '{path}' is empty (0 bytes): an empty shard; remove it from the inputs")
    if kind == "parquet":
        return _parquet(path, key, size)
    if kind == "arrow":
        return _arrow_files(path, (path,), key)
    src = Source(path, kind, size)
    if src.compression == ".zst":
        _zstd()  # the package is there before the job starts
    return src


def _parquet(path: Path, key: str, size: int) -> Source:
    import pyarrow.parquet as pq  # lazy: pyarrow is only for Parquet/Arrow inputs

    try:
        pf = pq.ParquetFile(path)
        meta, names = pf.metadata, pf.schema_arrow.names  # top-level columns (a list column too)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a corrupt or truncated file
        raise ConfigError(f"input '{path}' is not a readable Parquet file ({first_line(exc)}); re-download or "
                          "re-export it") from exc
    if key not in names:
        raise ConfigError(f"Parquet file '{path}' has no column '{key}' (columns: {', '.join(names)}); pass "
                          "--key with the column that holds the text")
    if meta.num_rows == 0:
        raise ConfigError(f"Parquet file '{path}' has no rows: an empty shard; remove it from the inputs")
    return Source(path, "parquet", size, rows=meta.num_rows)


def _arrow_dir(path: Path, key: str) -> Source:
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        example = path / (splits or ["train"])[0]
        raise ConfigError(f"'{path}' is a DatasetDict; give one split's directory, e.g. {example}")
    state = path / "state.json"
    if state.is_file():
        try:
            names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"'{state}' is not a `datasets` state file ({first_line(exc)}); save the dataset "
                              "again with Dataset.save_to_disk") from exc
        files = tuple(path / n for n in names)
    else:
        files = tuple(sorted(p for p in path.glob("*.arrow") if not p.name.startswith("cache-")))
    if not files:
        raise ConfigError(f"directory '{path}' is not a `datasets` directory (no state.json, no .arrow files); "
                          "give the data files or a glob such as 'DIR/*.parquet' instead")
    return _arrow_files(path, files, key)


def _arrow_open(f: Path):
    import pyarrow as pa  # lazy: pyarrow is only for Parquet/Arrow inputs

    source = pa.memory_map(str(f))
    try:
        return pa.ipc.open_stream(source)  # what `datasets` writes
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source)


def _arrow_files(path: Path, files: tuple[Path, ...], key: str) -> Source:
    rows = size = 0
    for f in files:
        if not f.is_file():
            raise ConfigError(f"Arrow file '{f}' (listed in {path}) not found")
        try:
            reader = _arrow_open(f)
            names = reader.schema.names
            n = sum(b.num_rows for b in _batches_of(reader))
        except Exception as exc:
            raise ConfigError(f"input '{f}' is not a readable Arrow file ({first_line(exc)}); save the dataset "
                              "again") from exc
        if key not in names:
            raise ConfigError(f"Arrow data '{f}' has no column '{key}' (columns: {', '.join(names)}); pass "
                              "--key with the column that holds the text")
        rows += n
        size += f.stat().st_size
    if rows == 0:
        raise ConfigError(f"Arrow data '{path}' has no rows: an empty shard; remove it from the inputs")
    return Source(path, "arrow", size, rows=rows, files=files)


def _batches_of(reader):
    if hasattr(reader, "num_record_batches"):  # IPC file format
        return (reader.get_batch(i) for i in range(reader.num_record_batches))
    return iter(reader)


def _zstd():
    try:
        import zstandard  # lazy: only for .zst inputs
    except ImportError as exc:
        raise ConfigError("a .zst input needs the zstandard package: pip install zstandard") from exc
    return zstandard


def iter_records(src: Source, key: str) -> Iterator[tuple[str | list[str], float]]:
    """(the record's text, the fraction of this input read so far), in file order."""
    if src.kind in ("jsonl", "txt"):
        yield from _iter_text(src, key)
    elif src.kind == "parquet":
        yield from _iter_parquet(src, key)
    else:
        yield from _iter_arrow(src, key)


class _ZstdStream(io.RawIOBase):
    """A zstd file decompressed as it is read, frame after frame; a file that ends inside a frame
    is an error (zstandard's stream reader returns a silent EOF there)."""

    def __init__(self, raw):
        self.raw, self.zstd = raw, _zstd()
        self.dobj, self.pending = self.zstd.ZstdDecompressor().decompressobj(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self.pending:
            chunk = self.raw.read(1 << 16)
            if not chunk:
                if not self.dobj.eof and self._started:
                    raise EOFError("the zstd stream ends inside a frame")
                return 0
            self._started = True
            try:
                self.pending = self.dobj.decompress(chunk)
                while self.dobj.eof and self.dobj.unused_data:  # the next frame of a multi-frame file
                    rest = self.dobj.unused_data
                    self.dobj = self.zstd.ZstdDecompressor().decompressobj()
                    self.pending += self.dobj.decompress(rest)
            except self.zstd.ZstdError as exc:
                raise OSError(f"zstd: {exc}") from exc
        n = min(len(buf), len(self.pending))
        buf[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    _started = False


def _open_text(src: Source):
    raw = open(src.path, "rb")
    if src.compression == ".gz":
        stream = gzip.GzipFile(fileobj=raw)
    elif src.compression == ".zst":
        stream = io.BufferedReader(_ZstdStream(raw), 1 << 16)
    else:
        stream = raw
    return raw, io.TextIOWrapper(stream, encoding="utf-8")


def _iter_text(src: Source, key: str):
    raw, f = _open_text(src)
    n = 0
    try:
        lineno = 0
        while True:
            try:
                line = f.readline()
            except (OSError, EOFError, UnicodeDecodeError) as exc:  # gzip and _ZstdStream raise these
                raise ConfigError(f"{src.path}: cannot read past line {lineno} ({first_line(exc)}); the file is "
                                  "corrupt or truncated") from exc
            if not line:
                break
            lineno += 1
            if not line.strip():
                continue
            if src.kind == "txt":
                text = line.rstrip("\n")
            else:
                text = _json_text(line, key, src.path, lineno)
            n += 1
            yield text, min(1.0, raw.tell() / src.size)
    finally:
        f.close()
    if n == 0:
        raise ConfigError(f"input '{src.path}' holds no documents: an empty shard; remove it from the inputs")


def _json_text(line: str, key: str, path: Path, lineno: int):
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg}); one JSON object per line is "
                          "expected") from exc
    if not isinstance(record, dict) or key not in record:
        raise ConfigError(f"{path}:{lineno}: no '{key}' field; pass --key (or --json-key) with the field that "
                          "holds the text")
    return _text_value(record[key], f"{path}:{lineno}", key)


def _text_value(value, where: str, key: str):
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value  # pre-split sentences, as Megatron-LM's tool accepts
    if value is None:
        raise ConfigError(f"{where}: '{key}' is null; remove or fill that record (an empty string is an empty "
                          "document)")
    raise ConfigError(f"{where}: '{key}' is {type(value).__name__}, not text; give the field/column that holds the "
                      "text (--key)")


def _iter_parquet(src: Source, key: str):
    import pyarrow.parquet as pq  # lazy: pyarrow is only for Parquet/Arrow inputs

    done = 0
    for batch in pq.ParquetFile(src.path).iter_batches(batch_size=BATCH_ROWS, columns=[key]):
        for i, value in enumerate(batch.column(0).to_pylist()):
            yield _text_value(value, f"{src.path} row {done + i}", key), (done + i + 1) / src.rows
        done += batch.num_rows


def _iter_arrow(src: Source, key: str):
    done = 0
    for f in src.files:
        for batch in _batches_of(_arrow_open(f)):
            col = batch.column(batch.schema.get_field_index(key))
            for i, value in enumerate(col.to_pylist()):
                yield _text_value(value, f"{f} row {done + i}", key), (done + i + 1) / src.rows
            done += batch.num_rows
