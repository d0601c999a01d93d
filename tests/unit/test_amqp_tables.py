"""Header tables on the AMQP path: the encoder installed into pamqp writes the bytes
pamqp writes (`adapters/rabbitmq/tables.py`), and the tolerant decoder reads text values
in place as pamqp reads them, invalid UTF-8 and truncated values included
(`adapters/rabbitmq/tolerant.py`)."""

from __future__ import annotations

import datetime
import decimal
import importlib.util
import struct
from types import ModuleType
from typing import Any

import pytest
from pamqp import decode

from eventbus.adapters.rabbitmq import tables, tolerant

CE_HEADERS = {
    "ce-id": "3c02e159-0155-469b-9be6-3aca1b133419",
    "ce-source": "orders-service",
    "ce-specversion": "1.0",
    "ce-type": "order.created",
    "ce-time": "2026-11-30T02:22:10.234Z",
    "ce-dataschema": "urn:eventbus:schema:orders:order.created",
}


def _pristine_decode() -> ModuleType:
    """pamqp's decoder as shipped (the installed one is the tolerant one)."""
    spec = importlib.util.spec_from_file_location("pristine_pamqp_decode", decode.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PRISTINE = _pristine_decode()


@pytest.mark.parametrize(
    "table",
    [
        CE_HEADERS,
        {"ce-type": "", "ce-id": "x"},  # an empty value
        {"ce-subject": "café ☕", "ce-ünïcode": "名前"},  # multi-byte names and values
        {"b": "2", "a": "1", "c": "3"},  # written sorted by name, as pamqp writes them
        {**CE_HEADERS, "x-eventbus-attempt": 3},  # a number: pamqp's encoder
        {"nested": {"ce-id": "x"}, "list": ["a", 1], "none": None, "flag": True},
        {"bytes": bytearray(b"\xff\x00"), "float": 1.5, "dec": decimal.Decimal("1.25")},
        {"when": datetime.datetime(2026, 11, 30, tzinfo=datetime.UTC)},
        {"n" * 129: "a name over 128 bytes: pamqp truncates it"},
        {},
    ],
)
def test_the_encoder_writes_the_bytes_pamqp_writes(table: dict[str, Any]) -> None:
    assert tables.field_table(table) == tables._ORIGINAL(table)


def test_text_that_cannot_be_encoded_fails_as_in_pamqp() -> None:
    bad = {"ce-id": "\udcff"}  # a lone surrogate (escaped bytes received elsewhere)
    with pytest.raises(UnicodeEncodeError):
        tables._ORIGINAL(bad)
    with pytest.raises(UnicodeEncodeError):
        tables.field_table(bad)


def test_the_encoder_is_what_pamqp_uses_once_installed() -> None:
    from pamqp import encode

    tables.install()
    tables.install()  # idempotent
    assert encode.field_table is tables.field_table
    assert encode.METHODS["table"] is tables.field_table
    assert encode.encode_table_value({"k": "v"}) == b"F" + tables._ORIGINAL({"k": "v"})


@pytest.mark.parametrize(
    "table",
    [CE_HEADERS, {**CE_HEADERS, "x-eventbus-attempt": 3, "nested": {"a": "b", "n": 1}}, {}],
)
def test_the_decoder_reads_what_pamqp_reads(table: dict[str, Any]) -> None:
    wire = tables._ORIGINAL(table) + b"trailing frame bytes"
    assert tolerant.field_table(wire) == PRISTINE.field_table(wire) == (len(wire) - 20, table)


def _entry(name: bytes, value: bytes, declared: int | None = None) -> bytes:
    size = len(value) if declared is None else declared
    return bytes((len(name),)) + name + b"S" + struct.pack(">I", size) + value


def test_a_value_that_is_not_utf8_stays_bytes_and_marks_the_table() -> None:
    entries = _entry(b"ce-id", b"ok") + _entry(b"ce-type", b"\xff\xfe")
    wire = struct.pack(">I", len(entries)) + entries
    consumed, table = tolerant.field_table(wire)
    assert (consumed, table) == PRISTINE.field_table(wire)
    assert table == {"ce-id": "ok", "ce-type": b"\xff\xfe"}
    assert tolerant.dubious(table)


def test_a_value_longer_than_its_table_is_cut_where_the_data_ends_as_in_pamqp() -> None:
    entries = _entry(b"ce-id", b"abc", declared=1000)
    wire = struct.pack(">I", len(entries)) + entries
    assert tolerant.field_table(wire) == PRISTINE.field_table(wire) == (len(wire), {"ce-id": "abc"})


def test_a_value_whose_length_is_cut_off_is_an_error_the_properties_survive() -> None:
    entries = bytes((5,)) + b"ce-id" + b"S\x00\x00"  # two of the four length bytes
    wire = struct.pack(">I", len(entries)) + entries
    with pytest.raises(ValueError):
        tolerant.field_table(wire)
    consumed, table = tolerant.top_field_table(wire)
    assert consumed == len(wire) and table == {} and tolerant.dubious(table)
