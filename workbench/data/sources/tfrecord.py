"""TFRecord files and ``tf.train.Example`` records, read without TensorFlow.

A TFRecord file is a sequence of records, each framed as (TensorFlow's ``record_writer.cc``)::

    uint64 length (little endian) | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

with ``masked_crc32c(x) = ((crc >> 15 | crc << 17) + 0xa282ead8) mod 2**32``. Files written with
``compression_type="GZIP"`` (RL Unplugged's own shards) are this stream inside gzip; TFDS's
prepared files are not compressed. Offsets here are positions in the (decompressed) stream, so a
record can be read again later from its offset (a forward seek in a gzip file decompresses up to
it; Python's ``gzip`` module does this).

``tf.train.Example`` (``tensorflow/core/example/{example,feature}.proto``) is parsed with the
``protobuf`` runtime (a dependency of TensorBoard, so of every install) from a message
description built here: ``Example{Features features = 1}``, ``Features{map<string, Feature>
feature = 1}``, ``Feature{oneof kind: BytesList bytes_list = 1; FloatList float_list = 2;
Int64List int64_list = 3}``, each list ``repeated value = 1``. The record's data CRC is checked
when ``google-crc32c`` is installed (``pip install -e ".[rlu]"``), the length CRC always.
"""

from __future__ import annotations

import gzip
import importlib
import os
import struct
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, BinaryIO

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from workbench.data.sources import SourceError

__all__ = ["TFRecordError", "crc_checked", "decode_example", "is_gzip", "masked_crc32c", "open_records",
           "peek", "read_record_at", "records"]

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")


class TFRecordError(SourceError):
    """A TFRecord file or Example that cannot be read (truncated, corrupt, or not a TFRecord file)."""


def _crc32c_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def _crc32c_python(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fast_crc32c() -> Any:
    try:  # optional: pip install -e ".[rlu]"
        return importlib.import_module("google_crc32c").value
    except ImportError:
        return None


_FAST = _fast_crc32c()


def crc_checked() -> bool:
    """Whether record data CRCs are checked (``google-crc32c`` installed); lengths' CRCs always are."""
    return _FAST is not None


def masked_crc32c(data: bytes, *, fast: bool = True) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    crc = _FAST(data) if (fast and _FAST is not None) else _crc32c_python(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def is_gzip(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def open_records(path: str | os.PathLike) -> BinaryIO:
    """The record stream of ``path``: the file itself, or its gzip decompression."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def _read_one(f: BinaryIO, where: str, offset: int) -> bytes | None:
    head = f.read(_HEADER.size)
    if not head:
        return None
    if len(head) < _HEADER.size:
        raise TFRecordError(f"{where}: truncated record header at byte {offset} of the record stream")
    length, length_crc = _HEADER.unpack(head)
    if masked_crc32c(head[:8], fast=False) != length_crc:
        raise TFRecordError(f"{where}: corrupt record length at byte {offset} (CRC mismatch): not a TFRecord file, "
                            "or a damaged one")
    data = f.read(length)
    foot = f.read(_FOOTER.size)
    if len(data) < length or len(foot) < _FOOTER.size:
        raise TFRecordError(f"{where}: truncated record at byte {offset} ({len(data)} of {length} bytes): "
                            "an incomplete download?")
    if _FAST is not None and masked_crc32c(data) != _FOOTER.unpack(foot)[0]:
        raise TFRecordError(f"{where}: corrupt record at byte {offset} (data CRC mismatch)")
    return data


def records(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """``(offset, data)`` of every record of ``path`` in order (offsets in the record stream)."""
    where = str(path)
    try:
        with open_records(path) as f:
            offset = 0
            while (data := _read_one(f, where, offset)) is not None:
                yield offset, data
                offset += _HEADER.size + len(data) + _FOOTER.size
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise TFRecordError(f"{where}: unreadable ({e})") from None


def read_record_at(f: BinaryIO, offset: int, where: str) -> bytes:
    """The record at ``offset`` of an open record stream (from :func:`open_records`)."""
    try:
        f.seek(offset)
        data = _read_one(f, where, offset)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise TFRecordError(f"{where}: unreadable at byte {offset} ({e})") from None
    if data is None:
        raise TFRecordError(f"{where}: no record at byte {offset} (the file is shorter than when it was indexed)")
    return data


@lru_cache(maxsize=1)
def _example_class() -> Any:
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="workbench/tf_example.proto", package="workbench_tf", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> descriptor_pb2.DescriptorProto:
        m = fdp.message_type.add(name=name)
        for fname, number, label, ftype, type_name in fields:
            fd = m.field.add(name=fname, number=number, label=label, type=ftype)
            if type_name:
                fd.type_name = type_name
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, rep, F.TYPE_BYTES, ""))
    message("FloatList", ("value", 1, rep, F.TYPE_FLOAT, ""))
    message("Int64List", ("value", 1, rep, F.TYPE_INT64, ""))
    feature = message("Feature", ("bytes_list", 1, opt, F.TYPE_MESSAGE, ".workbench_tf.BytesList"),
                      ("float_list", 2, opt, F.TYPE_MESSAGE, ".workbench_tf.FloatList"),
                      ("int64_list", 3, opt, F.TYPE_MESSAGE, ".workbench_tf.Int64List"))
    feature.oneof_decl.add(name="kind")
    for fd in feature.field:
        fd.oneof_index = 0
    features = message("Features", ("feature", 1, rep, F.TYPE_MESSAGE, ".workbench_tf.Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, label=opt, type=F.TYPE_STRING)
    entry.field.add(name="value", number=2, label=opt, type=F.TYPE_MESSAGE, type_name=".workbench_tf.Feature")
    entry.options.map_entry = True
    message("Example", ("features", 1, opt, F.TYPE_MESSAGE, ".workbench_tf.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("workbench_tf.Example"))


def decode_example(data: bytes, where: str = "record") -> dict[str, list[bytes] | np.ndarray]:
    """A serialized ``tf.train.Example`` -> ``{key: value}``: a list of bytes for a BytesList,
    float32 / int64 arrays for FloatList / Int64List (an unset Feature gives an empty int64 array)."""
    msg = _example_class()()
    try:
        msg.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise TFRecordError(f"{where}: not a tf.train.Example ({e})") from None
    out: dict[str, list[bytes] | np.ndarray] = {}
    for key, feat in msg.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind == "bytes_list":
            out[key] = list(feat.bytes_list.value)
        elif kind == "float_list":
            out[key] = np.asarray(feat.float_list.value, dtype=np.float32)
        else:
            out[key] = np.asarray(feat.int64_list.value if kind else [], dtype=np.int64)
    return out


def peek(path: str | os.PathLike, n: int = 1) -> list[bytes]:
    """The first ``n`` records of ``path`` (for detection and ``info``)."""
    out = []
    for _, data in records(path):
        out.append(data)
        if len(out) >= n:
            break
    return out

