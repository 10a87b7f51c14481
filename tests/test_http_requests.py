"""HTTP form fields to a DreamRequest: every field under its proto name, in the proto's JSON mapping."""

from __future__ import annotations

import pytest

from dreamstream.server.http_requests import OPTION_NAMES, as_json, dream_request
from dreamstream.server.refusals import InvalidRequest
from dreamstream.v1 import dream_pb2


def test_each_kind_of_field_is_read_as_the_proto_json_mapping_reads_it() -> None:
    request = dream_request(
        {
            "octaves": "3",
            "step_size": "0.02",
            "jitter": "0",
            "seed": "-9007199254740993",
            "original_colors": "true",
            "format": "IMAGE_FORMAT_WEBP",
            "channel_mode": "CHANNEL_MODE_STRONGEST",
            "layers": '{"block3": 1, "block10": 0.5}',
            "channels": '{"block3": {"channels": [4, 7]}}',
        },
        {"image": b"picture", "guide": b"guide"},
    )
    assert (request.octaves, request.jitter, request.HasField("jitter")) == (3, 0, True)  # 0 turns jitter off
    assert request.step_size == pytest.approx(0.02) and request.seed == -9007199254740993  # int64 kept whole
    assert request.original_colors and request.format == dream_pb2.IMAGE_FORMAT_WEBP
    assert request.channel_mode == dream_pb2.CHANNEL_MODE_STRONGEST
    assert dict(request.layers) == {"block3": 1.0, "block10": 0.5}
    assert list(request.channels["block3"].channels) == [4, 7]
    assert (request.image, request.guide) == (b"picture", b"guide")


def test_every_field_of_dream_request_but_the_pictures_is_an_option() -> None:
    fields = set(dream_pb2.DreamRequest.DESCRIPTOR.fields_by_name)
    assert set(OPTION_NAMES) == fields - {"image", "guide"}


@pytest.mark.parametrize("name", ["octave", "Octaves", "image", "guide", "x" * 1000])
def test_an_unknown_name_or_a_picture_as_text_is_refused_with_the_list_of_fields(name: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        dream_request({name: "3"}, {})
    assert refused.value.reason == "UNKNOWN_FIELD" and len(refused.value.field) <= 64
    assert "steps_per_octave" in str(refused.value) and "image and guide as files" in str(refused.value)
    assert len(str(refused.value)) < 1200
    if name == "octave":
        assert "did you mean 'octaves'?" in str(refused.value)


@pytest.mark.parametrize(
    ("name", "text", "takes"),
    [
        ("octaves", "many", "an integer"),
        ("octaves", "2147483648", "an integer"),
        ("step_size", "fast", "a number"),
        ("original_colors", "yes", "true or false"),
        ("format", "GIF", "IMAGE_FORMAT_PNG"),
        ("layers", "block3:1", '{"LAYER": 1.0}'),
        ("channels", '{"block3": [1]}', '{"LAYER": {"channels": [1, 2]}}'),
    ],
)
def test_a_value_the_field_cannot_hold_is_refused_naming_the_field_and_what_it_takes(
    name: str, text: str, takes: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        dream_request({name: text}, {})
    assert refused.value.field == name and takes in str(refused.value)


def test_events_are_json_with_the_proto_field_names_and_pictures_in_base64() -> None:
    frame = dream_pb2.Frame(octave=1, octaves=2, width=3, height=4, image=b"\x89PNG", final=False)
    assert as_json(frame) == {
        "octave": 1, "octaves": 2, "width": 3, "height": 4, "image": "iVBORw==",
        "format": "IMAGE_FORMAT_UNSPECIFIED", "final": False, "round": 0,
    }  # fmt: skip
