"""HTTP fields to a DreamRequest and events to JSON: the conversions of the HTTP gateway, nothing more.

A dream over HTTP names its options exactly as `DreamRequest` does (`octaves`,
`steps_per_octave`, `layers`, ...), as form fields beside the uploaded picture or as
query parameters beside a raw picture body. Each value is what the proto's JSON mapping
takes for that field: a number, `true`/`false`, an enum's name, or a JSON object for the
maps (`layers={"block10": 1}`). The request is then the same message a gRPC caller
sends, so every check and default stays in the engine's planning step.
Events go back as the proto's JSON mapping of the gRPC messages, with the proto's own
field names: the frames' pictures as base64, as that mapping writes bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from dreamstream.server.refusals import InvalidRequest, did_you_mean, shown
from dreamstream.v1 import dream_pb2

# The fields that carry pictures: uploaded as files (or the raw body), never as text.
PICTURE_FIELDS = ("image", "guide")
_DREAM_FIELDS = dream_pb2.DreamRequest.DESCRIPTOR.fields_by_name
OPTION_NAMES = sorted(name for name in _DREAM_FIELDS if name not in PICTURE_FIELDS)


def dream_request(options: Mapping[str, str], pictures: Mapping[str, bytes]) -> dream_pb2.DreamRequest:
    """The DreamRequest of a form's (or a query's) text fields and its pictures.

    A name that is no field of DreamRequest is refused with the list of those that are;
    a value the field cannot hold is refused naming the field and what it takes.
    """
    request = dream_pb2.DreamRequest()
    for name, text in options.items():
        field = _DREAM_FIELDS.get(name)
        if field is None or name in PICTURE_FIELDS:
            raise InvalidRequest(_unknown_field_message(name), reason="UNKNOWN_FIELD", field=name[:64])
        try:
            json_format.ParseDict({name: _json_value(field, text)}, request, ignore_unknown_fields=False)
        except json_format.ParseError as error:
            raise InvalidRequest(
                f"{name}={shown(text)} is not a value of {name} ({_what_it_takes(field)}): {_first_line(error)}",
                field=name,
            ) from None
    for name, data in pictures.items():
        setattr(request, name, data)
    return request


def _unknown_field_message(name: str) -> str:
    pictures = " and ".join(PICTURE_FIELDS)
    return (
        f"unknown field {shown(name)}{did_you_mean(name, OPTION_NAMES)}: a dream takes {', '.join(OPTION_NAMES)} "
        f"(the fields of DreamRequest), and the pictures {pictures} as files"
    )


def _json_value(field: FieldDescriptor, text: str) -> Any:
    """What the proto's JSON mapping expects for `field`, from the text a form carries."""
    if field.message_type is not None or field.is_repeated:
        try:
            return json.loads(text)  # maps and lists come as JSON
        except ValueError:
            return text  # ParseDict says what the field wants
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return {"true": True, "false": False}.get(text, text)  # the mapping takes no quoted boolean
    return text  # numbers (int64 too, whole) and enum names are accepted as strings


def _what_it_takes(field: FieldDescriptor) -> str:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        example = '{"LAYER": {"channels": [1, 2]}}' if value.message_type is not None else '{"LAYER": 1.0}'
        return f"a JSON object such as {example}"
    if field.enum_type is not None:
        return "one of " + ", ".join(value.name for value in field.enum_type.values)
    kinds = {
        FieldDescriptor.CPPTYPE_BOOL: "true or false",
        FieldDescriptor.CPPTYPE_FLOAT: "a number",
        FieldDescriptor.CPPTYPE_DOUBLE: "a number",
        FieldDescriptor.CPPTYPE_STRING: "text",
    }
    return kinds.get(field.cpp_type, "an integer")


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def as_json(message: Message) -> dict[str, Any]:
    """A message as the proto's JSON mapping with the proto's field names, defaults included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
