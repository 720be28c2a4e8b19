"""The teacher cache's encodings (distill/cache_encoding.py): every value encoding round-trips
within its stated bound on real teacher rows (huge logits included), ids are exact at every id
width (uint8, uint16, 17- and 21-bit packed, int32), the sizes meet the issue's targets at a
131,072-token vocabulary, a zstd fp16 shard reads back through the real writer and reader, and the
sparse KD loss from a 16-bit cache stays within 1e-3 of the fp32 cache's."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from megatron_kd.distill.cache import COMPLETE, MANIFEST, TeacherCache, teacher_rows
from megatron_kd.distill.cache_encoding import FORMAT, Encoding, value_error_bound
from megatron_kd.distill.sparse import sparse_kd_loss
from megatron_kd.errors import ConfigError
from megatron_kd.training.teacher_cache import _write_shard, verify_cache


def _rows(vocab=300, top_k=16, seq=7, b=3, seed=0, huge=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(seq, b, vocab, generator=g) * 4
    if huge:
        logits[0, 0] *= 60.0  # log-probabilities in the thousands below 0
    labels = torch.randint(0, vocab, (seq, b), generator=g)
    return teacher_rows(logits, labels, vocab, top_k, None), labels


@pytest.mark.parametrize("values", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("top_k", [16, None])
@pytest.mark.parametrize("huge", [False, True])
def test_values_round_trip_within_their_bound(values, top_k, huge):
    rows, _ = _rows(top_k=top_k, huge=huge)
    enc = Encoding.for_vocab(300, values)
    back = enc.decode(enc.encode(rows))
    assert set(back) == set(rows)
    for name, x in rows.items():
        if name == "ids":
            assert torch.equal(back[name], x.to(torch.int32))
            continue
        finite = torch.isfinite(x)
        assert torch.equal(torch.isfinite(back[name]), finite), name
        err = (back[name].double() - x.double()).abs()[finite]
        bound = value_error_bound(values, x)[finite]
        if values == "fp16":  # below -65504 the value is clamped there (exp() of either is 0)
            bound = torch.where(x[finite] < -65504, (x[finite].double() + 65504).abs(), bound)
        assert bool((err <= bound).all()), (name, float((err - bound).max()))
        if values != "fp32":  # the bound is tight: the rounding uses a good part of it
            assert float(err.max()) > 0.1 * float(bound.max()) or float(err.max()) == 0.0


@pytest.mark.parametrize("vocab,bits,dtype", [(50, 6, np.uint8), (256, 8, np.uint8), (257, 9, np.uint16),
                                              (65536, 16, np.uint16), (131072, 17, np.uint16),
                                              (2 ** 20 + 3, 21, np.uint16), (2 ** 24 + 1, 25, np.int32)])
def test_ids_exact_in_the_fewest_bits(vocab, bits, dtype):
    g = torch.Generator().manual_seed(vocab)
    ids = torch.randint(0, vocab, (3, 5, 7), generator=g, dtype=torch.int64)
    ids[0, 0, :2] = torch.tensor([0, vocab - 1])
    rows = {"ids": ids.to(torch.int32), "logp": torch.zeros(3, 5, 7)}
    enc = Encoding.for_vocab(vocab, "fp16")
    assert enc.id_bits == bits
    stored = enc.encode(rows)
    assert stored["ids"].dtype == dtype
    assert ("ids_high" in stored) == (16 < bits <= 24)
    if "ids_high" in stored:  # (bits - 16) bits per id, packed per sample
        assert stored["ids_high"].shape == enc.shape("ids_high", 3, 5, 7) == (3, math.ceil(5 * 7 * (bits - 16) / 8))
    assert torch.equal(enc.decode(stored)["ids"], ids.to(torch.int32))
    # one sample decodes alone (the reader reads rows one at a time)
    one = enc.decode({k: v[1:2] for k, v in stored.items()})["ids"]
    assert torch.equal(one, ids[1:2].to(torch.int32))


def test_sizes_meet_the_targets_at_a_131072_token_vocabulary():
    v = 131072
    bf16 = Encoding.for_vocab(v, "bf16")
    assert bf16.id_bits == 17
    per_entry = bf16.bytes_per_token(v, 64) - bf16.bytes_per_token(v, 63)
    assert per_entry == 2 + 2 + 1 / 8 <= 4.25  # bf16 value, 17-bit id
    assert bf16.bytes_per_token(v, 64) <= 280 and bf16.bytes_per_token(v, 8) <= 45
    fp32 = Encoding(values="fp32", id_bits=32)  # format 1
    assert fp32.bytes_per_token(v, 64) == 4 * (2 * 64 + 1) + 8  # the old cache: 524 B
    assert Encoding.for_vocab(512, "fp16").bytes_per_token(512, 8) == 8 * 4 + 6  # 2-byte ids


def _write(root, enc, vocab=300, top_k=16, samples=5, rows_per_shard=2):
    root.mkdir()
    shards = math.ceil(samples / rows_per_shard)
    written = []
    for j in range(shards):
        rows, _ = _rows(vocab, top_k, b=min(rows_per_shard, samples - j * rows_per_shard), seed=j)
        _write_shard(root, j, rows, enc)
        written.append(rows)
    manifest = {"fingerprint": {"top_k": top_k or "all", "vocab_size": vocab}, "num_samples": samples,
                "shard_rows": rows_per_shard, "num_shards": shards, "seq_length": 7,
                "format": FORMAT, "encoding": enc.to_manifest()}
    (root / MANIFEST).write_text(json.dumps(manifest))
    (root / COMPLETE).write_text("")
    return {k: torch.cat([w[k] for w in written]) for k in written[0]}


def test_zstd_fp16_shards_read_back_through_the_real_reader(tmp_path):
    enc = Encoding.for_vocab(300, "fp16", zstd=3)
    rows = _write(tmp_path / "c", enc)
    assert sorted(p.name for p in (tmp_path / "c" / "shard_000000").iterdir()) == [
        "entropy.npy.zst", "ids.npy.zst", "index.json", "label_logp.npy.zst", "logp.npy.zst", "other_logp.npy.zst"]
    cache = TeacherCache(tmp_path / "c")
    got = cache.rows(torch.tensor([4, 0, 3]))
    want = enc.decode(enc.encode({k: v[[4, 0, 3]] for k, v in rows.items()}))
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    assert "fp16 values, 9-bit ids, zstd 3: all verified" in verify_cache(tmp_path / "c")
    # a damaged frame (its checksum re-forged) is one line naming the file
    f = tmp_path / "c" / "shard_000001" / "logp.npy.zst"
    f.write_bytes(b"not zstd" + f.read_bytes()[8:])
    index = json.loads((f.parent / "index.json").read_text())
    from megatron_kd.checkpoint.refs import file_checksum

    index[f.name] = {"bytes": f.stat().st_size, "crc32": file_checksum(f)}
    (f.parent / "index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"shard_000001/logp.npy.zst is not a NumPy array"):
        TeacherCache(tmp_path / "c").rows(torch.tensor([2]))


@pytest.mark.parametrize("values", ["fp16", "bf16"])
def test_sparse_kd_loss_from_a_16_bit_cache_within_1e3_of_fp32(values):
    """The student's loss from the decoded 16-bit rows against the fp32 rows, at a top-64 cache
    (the issue's criterion, on the objective: the short-run check is in tests/training)."""
    vocab, k = 512, 64
    g = torch.Generator().manual_seed(99)  # a student other than the teacher
    rows, labels = _rows(vocab, k, seq=32, b=4, seed=3)
    student = torch.randn(32, 4, vocab, generator=g) * 4
    mask = torch.ones(32, 4)
    enc = Encoding.for_vocab(vocab, values)
    out = {}
    for name, r in (("fp32", rows), (values, enc.decode(enc.encode(rows)))):
        seq = {key: v.transpose(0, 1) for key, v in r.items()}
        total, sums = sparse_kd_loss(student.clone(), seq["ids"], seq["logp"], seq["other_logp"], labels, mask,
                                     top_k=k, other_bucket=True, ce_weight=0.5, kd_weight=0.5, vocab_size=vocab)
        out[name] = (float(total) / mask.sum().item(), float(sums["kd"]) / mask.sum().item())
    assert abs(out[values][0] - out["fp32"][0]) < 1e-3, out
    assert abs(out[values][1] - out["fp32"][1]) < 1e-3 and out["fp32"][1] > 1.0, out


def test_unknown_encodings_are_one_line():
    with pytest.raises(ConfigError, match="unknown cache value encoding 'fp8'"):
        Encoding("fp8")
    with pytest.raises(ConfigError, match="--zstd must be a level"):
        Encoding(zstd=40)
    m = {"format": 2, "encoding": {"values": "fp16", "id_bits": "9", "zstd": 0}}
    with pytest.raises(ConfigError, match="id_bits, zstd and draws must be integers"):
        Encoding.from_manifest(m, "x")
    assert Encoding.from_manifest({}, "x") == Encoding("fp32", 32, 0)  # format 1


@pytest.mark.parametrize("draws", [1, 12, 16, 255])
def test_sampled_counts_round_trip_exactly_and_meet_40_bytes(draws):
    """A sampled cache stores each slot's draw count in bit(draws) bits instead of a value: the
    decoded rows equal the writer's exactly (log(c / N), -inf for undrawn slots, no other mass)."""
    vocab = 300
    g = torch.Generator().manual_seed(draws)
    logits = torch.randn(7, 3, vocab, generator=g) * 2
    labels = torch.randint(0, vocab, (7, 3), generator=g)
    rows = teacher_rows(logits, labels, vocab, draws, None, sample_generator=torch.Generator().manual_seed(1))
    enc = Encoding.for_vocab(vocab, "fp16", draws=draws)
    stored = enc.encode(rows)
    assert sorted(stored) == ["counts", "entropy", "ids", "label_logp"]
    assert stored["counts"].shape == enc.shape("counts", 3, 7, draws) and stored["counts"].dtype == np.uint8
    back = enc.decode(stored)
    assert torch.equal(back["ids"], rows["ids"]) and torch.equal(back["logp"], rows["logp"])
    assert torch.all(back["other_logp"] == -math.inf) and back["other_logp"].shape == rows["other_logp"].shape
    assert Encoding.from_manifest({"format": FORMAT, "encoding": enc.to_manifest()}, "m") == enc
    # the target: <= 40 B per token at 131,072 tokens with ~12 tokens per position
    big = Encoding.for_vocab(131072, "fp16", draws=12)
    assert big.bytes_per_token(131072, 12) == 12 * (17 + 4) / 8 + 4 == 35.5
    assert "4-bit counts of 12 draws" in big.describe()
    with pytest.raises(ConfigError, match=r"--sample must be in 1..255"):
        Encoding.for_vocab(vocab, draws=256)
