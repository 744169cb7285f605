"""The format dataclasses: validation, JSON round trips, version checks, layout arithmetic."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logitcache.errors import BadInput, CacheMismatch, CacheOutdated
from logitcache.store.format import (
    _JSON_TYPES,
    _PARTS,
    FORMAT_VERSION,
    CacheSpec,
    CodecInfo,
    DatasetInfo,
    EncodingInfo,
    Layout,
    Provenance,
    TeacherInfo,
    ViewsInfo,
)
from logitcache.views import ViewSpec

SHA = "ab" * 32


def _spec(**over) -> CacheSpec:
    fields = dict(
        teacher=TeacherInfo(name="resnet8", weights_sha256=SHA, num_classes=10),
        dataset=DatasetInfo(name="digits", split="train", num_samples=1438, num_classes=10, fingerprint="f" * 64),
        views=ViewsInfo(count=2, clean=True, seed=0, augmentation=ViewSpec(kind="crop", size=8, padding=1).to_json()),
        encoding=EncodingInfo(kind="topk", dtype="fp16", k=5),
        layout=Layout(chunk_samples=256),
        batch_size=256,
    )
    return CacheSpec(**{**fields, **over})


@st.composite
def specs(draw) -> CacheSpec:
    classes = draw(st.integers(2, 1000))
    kind = draw(st.sampled_from(["full", "topk"]))
    encoding = (
        EncodingInfo(kind="full", dtype=draw(st.sampled_from(["fp32", "fp16", "bf16"])))
        if kind == "full"
        else EncodingInfo(kind="topk", dtype=draw(st.sampled_from(["fp32", "fp16", "bf16", "q8"])),
                          k=draw(st.integers(1, classes - 1)), indices=draw(st.sampled_from(["packed", "int"])))
    )
    # Format 2 stores (still read) have whole-integer indices, and so does a full encoding's spec of either.
    version = draw(st.sampled_from([2, FORMAT_VERSION])) if encoding.indices == "int" or kind == "full" else FORMAT_VERSION
    aug = draw(st.sampled_from([
        ViewSpec(kind="crop", size=32, padding=4), ViewSpec(kind="resized_crop", size=224, scale=(0.2, 1.0), flip=False),
    ]))
    text = st.text(min_size=1, max_size=20)
    return CacheSpec(
        teacher=TeacherInfo(name=draw(text), weights_sha256=draw(st.text("0123456789abcdef", min_size=64, max_size=64)),
                            num_classes=classes),
        dataset=DatasetInfo(name=draw(text), split=draw(st.sampled_from(["train", "test"])),
                            num_samples=draw(st.integers(1, 10**7)), num_classes=classes, fingerprint=draw(text)),
        views=ViewsInfo(count=draw(st.integers(1, 100)), clean=draw(st.booleans()), seed=draw(st.integers(0, 2**32)),
                        augmentation=aug.to_json()),
        encoding=encoding,
        codec=draw(st.sampled_from([CodecInfo(), CodecInfo(compressor="none", checksum=False),
                                    CodecInfo(cname="lz4", clevel=3, shuffle="bitshuffle")])),
        layout=Layout(chunk_samples=draw(st.integers(1, 10**5)), shard_chunks=draw(st.integers(0, 64))),
        batch_size=draw(st.integers(1, 4096)),
        format_version=version,
        precision=draw(st.sampled_from(["fp32", "bf16", "fp16"])),
        channels_last=draw(st.booleans()),
    )


@settings(max_examples=100, deadline=None)
@given(specs())
def test_spec_json_round_trip(spec):
    text = json.dumps(spec.to_json())
    back = CacheSpec.from_json(json.loads(text))
    assert back == spec
    assert back.differences(spec) == []
    assert back.short_id() == spec.short_id()
    assert ViewSpec.from_json(back.views.augmentation).to_json() == spec.views.augmentation
    # Absent at their defaults: a store dumped before these fields existed keeps its spec and id.
    assert ("precision" in spec.to_json()) == (spec.precision != "fp32")
    assert ("channels_last" in spec.to_json()) == spec.channels_last


def test_provenance_round_trip_ignores_unknown_keys():
    prov = Provenance(tool_version="0.1.0", created_at="2026-01-01T00:00:00+00:00", complete=True,
                      teacher_test_accuracy=93.5, teacher_test_samples=10000, device="cuda:0")
    d = json.loads(json.dumps(prov.to_json()))
    assert Provenance.from_json(d) == prov
    assert Provenance.from_json({**d, "added_in_a_later_minor": 1}) == prov


def test_newer_format_is_refused_with_the_fix():
    d = _spec().to_json()
    d["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(CacheMismatch, match="newer than this logitcache reads.*upgrade"):
        CacheSpec.from_json(d)
    d["format_version"] = "1"
    with pytest.raises(CacheMismatch):
        CacheSpec.from_json(d)


def test_a_format_2_spec_is_read_with_whole_integer_indices():
    """Format 2 wrote no ``encoding.indices``: its JSON (and so its spec_sha256) is as it was, and it
    reads as ``indices="int"``, the layout of its arrays; a format-2 spec claiming packed is refused."""
    v2 = _spec(format_version=2, encoding=EncodingInfo(kind="topk", dtype="fp16", k=5, indices="int"))
    d = v2.to_json()
    assert d["format_version"] == 2 and d["encoding"] == {"kind": "topk", "dtype": "fp16", "k": 5}
    assert CacheSpec.from_json(d) == v2
    assert _spec().to_json()["encoding"] == {"kind": "topk", "dtype": "fp16", "k": 5, "indices": "packed"}
    assert "indices" not in _spec(encoding=EncodingInfo(kind="full", dtype="fp16")).to_json()["encoding"]
    with pytest.raises(BadInput, match="format 2 keeps whole-integer class indices"):
        _spec(format_version=2)
    d["encoding"]["indices"] = "packed"
    with pytest.raises(CacheMismatch, match="malformed"):
        CacheSpec.from_json(d)
    d["format_version"] = 1
    with pytest.raises(CacheOutdated, match="reads 2 to 3.*re-dump it"):
        CacheSpec.from_json(d)


def test_malformed_metadata_is_refused():
    d = _spec().to_json()
    del d["layout"]
    with pytest.raises(CacheMismatch, match="malformed"):
        CacheSpec.from_json(d)
    d = _spec().to_json()
    d["teacher"]["colour"] = "red"
    with pytest.raises(CacheMismatch, match="malformed"):
        CacheSpec.from_json(d)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(encoding=EncodingInfo(kind="topk", dtype="fp16", k=10)), "k < number of classes"),
        (dict(teacher=TeacherInfo(name="resnet8", weights_sha256=SHA, num_classes=100)), "100 classes but dataset"),
        (dict(batch_size=0), "batch_size"),
        (dict(precision="fp8"), "unknown precision 'fp8': use fp32, bf16, fp16"),
    ],
)
def test_spec_validation(change, message):
    with pytest.raises(BadInput, match=message):
        _spec(**change)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: EncodingInfo(kind="full", dtype="q8"), "full stores fp32, fp16, bf16"),
        (lambda: EncodingInfo(kind="full", dtype="fp16", k=3), "no k"),
        (lambda: EncodingInfo(kind="topk", dtype="fp16", k=0), "k >= 1"),
        (lambda: EncodingInfo(kind="topk", dtype="fp16", k=3, indices="bits"), "unknown index layout 'bits': use packed, int"),
        (lambda: EncodingInfo(kind="sparse", dtype="fp16"), "unknown encoding"),
        (lambda: TeacherInfo(name="x", weights_sha256="abc", num_classes=10), "sha256"),
        (lambda: DatasetInfo(name="x", split="train", num_samples=0, num_classes=10, fingerprint=""), "num_samples"),
        # Images need an augmented view; only text (no augmentation) has the clean view alone.
        (lambda: ViewsInfo(count=0, clean=True, seed=0, augmentation={"kind": "crop"}), "--views >= 1"),
        (lambda: ViewsInfo(count=0, clean=False, seed=0, augmentation={}), "--views >= 1"),
        (lambda: ViewsInfo(count=1, clean=True, seed=-1, augmentation={}), "seed"),
        (lambda: CodecInfo(compressor="gzip"), "unknown compressor"),
        (lambda: CodecInfo(cname="foo"), "unknown blosc compressor 'foo': use zstd, lz4"),
        (lambda: CodecInfo(clevel=10), "0..9"),
        (lambda: Layout(chunk_samples=0), "chunk_samples"),
    ],
)
def test_field_validation(build, message):
    with pytest.raises(BadInput, match=message):
        build()


def test_views_numbering():
    v = ViewsInfo(count=3, clean=True, seed=0, augmentation={})
    assert v.total == 4 and list(v.augmented) == [1, 2, 3]
    v = ViewsInfo(count=3, clean=False, seed=0, augmentation={})
    assert v.total == 3 and list(v.augmented) == [0, 1, 2]


def test_differences_name_dotted_fields():
    a, b = _spec(), _spec(views=ViewsInfo(count=3, clean=True, seed=0, augmentation=_spec().views.augmentation),
                          layout=Layout(chunk_samples=128))
    assert a.differences(b) == ["layout.chunk_samples: 256 vs 128", "views.count: 2 vs 3"]
    assert a.short_id() != b.short_id() and len(a.short_id()) == 12


@pytest.mark.parametrize(("chunk", "shard", "n"), [(256, 0, 1438), (256, 0, 256), (100, 4, 1438), (7, 3, 20), (1000, 0, 5)])
def test_layout_blocks_cover_every_sample_once(chunk, shard, n):
    layout = Layout(chunk_samples=chunk, shard_chunks=shard)
    assert layout.block_samples == chunk * max(1, shard)
    rows = [i for b in range(layout.num_blocks(n)) for i in layout.block_range(b, n)]
    assert rows == list(range(n))
    assert all(len(layout.block_range(b, n)) == layout.block_samples for b in range(layout.num_blocks(n) - 1))


@pytest.mark.parametrize(
    ("text", "codec"),
    [
        ("none", CodecInfo(compressor="none")),
        ("blosc-zstd", CodecInfo()),
        ("blosc-zstd-5", CodecInfo()),
        ("blosc-lz4-3", CodecInfo(cname="lz4", clevel=3)),
        ("blosc-lz4-3-bitshuffle", CodecInfo(cname="lz4", clevel=3, shuffle="bitshuffle")),
    ],
)
def test_codec_parse(text, codec):
    assert CodecInfo.parse(text) == codec


@pytest.mark.parametrize("text", ["gzip", "blosc", "blosc-zstd-x", "blosc-zstd-5-shuffle-more"])
def test_codec_parse_errors(text):
    with pytest.raises(BadInput, match="codec"):
        CodecInfo.parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [("blosc-foo-5", "unknown blosc compressor 'foo'"), ("blosc-zstd-12", "0..9"), ("blosc-zstd-5-twist", "unknown shuffle")],
)
def test_codec_parse_names_the_bad_value(text, message):
    with pytest.raises(BadInput, match=message):
        CodecInfo.parse(text)


def test_every_blosc_cname_is_one_zarr_accepts():
    # A name zarr refuses would only fail inside ZarrStore.create, half way through a store.
    from zarr.codecs import BloscCodec

    from logitcache.store.format import BLOSC_CNAMES

    for cname in BLOSC_CNAMES:
        BloscCodec(cname=cname, clevel=5, shuffle="shuffle", typesize=4)


def test_describe():
    assert CodecInfo().describe() == "blosc-zstd-5 shuffle + crc32c"
    assert CodecInfo(compressor="none", checksum=False).describe() == "uncompressed"
    assert EncodingInfo(kind="topk", dtype="q8", k=10).describe() == "top-10 q8"
    assert EncodingInfo(kind="full", dtype="bf16").describe() == "full bf16"


def test_every_stored_field_has_a_checked_json_type():
    """Every field of the stored dataclasses has an annotation the type check knows: a new field
    with another annotation would make every store read as malformed."""
    for cls in (CacheSpec, TeacherInfo, DatasetInfo, ViewsInfo, EncodingInfo, CodecInfo, Layout, Provenance):
        for f in dataclasses.fields(cls):
            assert f.name in _PARTS or f.type in _JSON_TYPES, (cls.__name__, f.name, f.type)


@pytest.mark.parametrize(("path", "value"), [("views.count", "3"), ("views.clean", 1), ("layout.chunk_samples", True),
                                             ("views.augmentation", []), ("teacher", "resnet8"), ("batch_size", 7.0),
                                             ("precision", 16), ("channels_last", 1)])
def test_a_field_of_the_wrong_json_type_is_malformed(path, value):
    d = _spec().to_json()
    *parents, last = path.split(".")
    node = d
    for key in parents:
        node = node[key]
    node[last] = value
    with pytest.raises(CacheMismatch, match=f"malformed .*{last}"):
        CacheSpec.from_json(d)
