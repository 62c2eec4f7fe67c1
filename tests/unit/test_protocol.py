"""The wire protocol: what clients may send, what they get back, and the published schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from llmstream.core import protocol, schema
from llmstream.core.protocol import (
    ErrorCode,
    Limits,
    ProtocolError,
    SendMessage,
    parse_client_message,
    send_message,
)

ROOT = Path(__file__).resolve().parents[2]
LIMITS = Limits(max_prompt_bytes=100, max_messages=3, default_model="m1", allowed_models=("m2",))
SERVER_FRAME = {"$ref": "#/$defs/serverFrame", "$defs": schema.SCHEMA["$defs"]}
CLIENT_MESSAGE = {"$ref": "#/$defs/clientMessage", "$defs": schema.SCHEMA["$defs"]}


def parse(body):
    return parse_client_message(body, fallback_request_id="gw-req", limits=LIMITS)


def rejection(body) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(body)
    frame = info.value.frame()
    jsonschema.validate(frame, SERVER_FRAME)
    return info.value


def test_a_prompt_becomes_one_user_message_with_the_default_model():
    message = parse('{"action":"sendMessage","prompt":"hi"}')
    assert message == SendMessage("gw-req", ({"role": "user", "content": "hi"},), "m1")


def test_a_client_request_id_and_allowed_model_are_kept():
    message = parse('{"action":"sendMessage","prompt":"hi","requestId":"abc-1","model":"m2"}')
    assert (message.request_id, message.model) == ("abc-1", "m2")


def test_history_in_messages_replaces_the_prompt():
    body = {
        "action": "sendMessage",
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    }
    assert [m["content"] for m in parse(json.dumps(body)).messages] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        ("not json", ErrorCode.BAD_REQUEST, "not valid JSON"),
        ("", ErrorCode.BAD_REQUEST, "empty"),
        ("[1,2]", ErrorCode.BAD_REQUEST, "JSON object, not array"),
        ('"text"', ErrorCode.BAD_REQUEST, "JSON object, not string"),
        ('{"prompt":"hi"}', ErrorCode.BAD_REQUEST, "'action' is required"),
        ('{"action":"fly"}', ErrorCode.UNKNOWN_ACTION, "unknown action 'fly'"),
        # A wrong type is a malformed message, not an unknown action (bad_request).
        ('{"action":42}', ErrorCode.BAD_REQUEST, "'action' must be a string, not number"),
        ('{"action":"sendMessage"}', ErrorCode.BAD_REQUEST, "'prompt' is required"),
        ('{"action":"sendMessage","prompt":"  "}', ErrorCode.BAD_REQUEST, "must not be empty"),
        (
            '{"action":"sendMessage","prompt":5}',
            ErrorCode.BAD_REQUEST,
            "must be a string, not number",
        ),
        (
            '{"action":"sendMessage","prompt":"' + "x" * 101 + '"}',
            ErrorCode.PAYLOAD_TOO_LARGE,
            "limit is 100",
        ),
        ('{"action":"sendMessage","prompt":"a","messages":[]}', ErrorCode.BAD_REQUEST, "not both"),
        ('{"action":"sendMessage","messages":[]}', ErrorCode.BAD_REQUEST, "non-empty array"),
        (
            '{"action":"sendMessage","messages":[1]}',
            ErrorCode.BAD_REQUEST,
            "'messages[0]' must be an object",
        ),
        (
            '{"action":"sendMessage","messages":[{"role":"system","content":"x"}]}',
            ErrorCode.BAD_REQUEST,
            "'messages[0].role'",
        ),
        (
            '{"action":"sendMessage","messages":[{"role":"assistant","content":"x"}]}',
            ErrorCode.BAD_REQUEST,
            "last of 'messages' must have role 'user'",
        ),
        (
            '{"action":"sendMessage","messages":'
            + json.dumps([{"role": "user", "content": "x"}] * 4)
            + "}",
            ErrorCode.PAYLOAD_TOO_LARGE,
            "limit is 3",
        ),
        (
            '{"action":"sendMessage","prompt":"a","model":"gpt-9"}',
            ErrorCode.MODEL_NOT_ALLOWED,
            "m1, m2",
        ),
        (
            '{"action":"sendMessage","prompt":"a","keepOpen":"yes"}',
            ErrorCode.BAD_REQUEST,
            "'keepOpen'",
        ),
        (
            '{"action":"sendMessage","prompt":"a","cache":"no"}',
            ErrorCode.BAD_REQUEST,
            "'cache' must be a boolean",
        ),
        (
            '{"action":"sendMessage","prompt":"a","requestId":"has space"}',
            ErrorCode.BAD_REQUEST,
            "'requestId'",
        ),
        (
            '{"action":"sendMessage","prompt":"a","requestId":7}',
            ErrorCode.BAD_REQUEST,
            "'requestId'",
        ),
    ],
)
def test_bad_input_is_rejected_with_a_code_and_a_message_naming_the_problem(body, code, names):
    error = rejection(body)
    assert error.code is code
    assert names in error.message


def test_an_error_frame_carries_the_clients_request_id_when_it_was_valid():
    error = rejection('{"action":"sendMessage","requestId":"mine"}')
    assert error.frame()["requestId"] == "mine"


def test_an_error_frame_falls_back_to_the_gateway_request_id():
    assert rejection("{").frame()["requestId"] == "gw-req"


def test_a_body_over_the_message_limit_is_rejected_before_parsing():
    huge = '{"action":"sendMessage","prompt":"' + "x" * (129 * 1024) + '"}'
    assert rejection(huge).code is ErrorCode.PAYLOAD_TOO_LARGE


def test_deeply_nested_json_is_a_bad_request_not_a_crash():
    assert rejection("[" * 50_000 + "]" * 50_000).code is ErrorCode.BAD_REQUEST


def test_every_frame_builder_matches_the_published_schema():
    frames = [
        protocol.accepted_frame("r"),
        protocol.start_frame("r", "m"),
        protocol.delta_frame("r", 0, "hi"),
        protocol.end_frame("r", "stop", 3, 4),
        protocol.end_frame("r", "length"),
        protocol.error_frame("r", ErrorCode.LLM_ERROR, "boom"),
    ]
    for frame in frames:
        jsonschema.validate(frame, SERVER_FRAME)


def test_messages_the_parser_accepts_match_the_client_schema():
    for body in (
        {"action": "sendMessage", "prompt": "hi"},
        {"action": "sendMessage", "messages": [{"role": "user", "content": "x"}], "keepOpen": True},
    ):
        parse(json.dumps(body))
        jsonschema.validate(body, CLIENT_MESSAGE)


def test_the_schema_in_docs_is_generated_from_the_code():
    published = json.loads((ROOT / "docs" / "protocol.schema.json").read_text())
    assert published == schema.SCHEMA, "run `make schema` to regenerate docs/protocol.schema.json"


def test_frames_are_compact_utf8_json():
    assert protocol.encode(protocol.delta_frame("r", 1, "é")) == (
        '{"type":"delta","requestId":"r","seq":1,"text":"é"}'.encode()
    )


def test_a_request_id_with_a_trailing_newline_is_refused():
    error = rejection('{"action":"sendMessage","prompt":"a","requestId":"abc\\n"}')
    assert error.code is ErrorCode.BAD_REQUEST and "'requestId'" in error.message


@pytest.mark.parametrize(
    "body",
    [
        '{"action":"sendMessage","prompt":"a\\ud800b"}',
        '{"action":"sendMessage","messages":[{"role":"user","content":"\\udfff"}]}',
    ],
)
def test_a_lone_surrogate_in_the_prompt_is_a_bad_request(body):
    error = rejection(body)
    assert error.code is ErrorCode.BAD_REQUEST and "not valid Unicode" in error.message


def test_an_error_quoting_a_lone_surrogate_still_encodes_as_utf8():
    error = rejection('{"action":"sendMessage","prompt":"a","model":"m\\ud800"}')
    assert error.code is ErrorCode.MODEL_NOT_ALLOWED
    assert json.loads(protocol.encode(error.frame()))["message"].startswith("model 'm?'")


def test_a_cache_opt_out_travels_to_the_envelope_and_the_default_leaves_it_out():
    from llmstream.core.envelope import PromptEnvelope, parse_envelope

    opted_out = send_message({"prompt": "hi", "cache": False}, LIMITS, "r1")
    assert opted_out.cache is False and send_message({"prompt": "hi"}, LIMITS, "r1").cache
    fields = dict(
        request_id="r1",
        connection_id="c",
        domain_name="d.example.com",
        stage="prod",
        messages=({"role": "user", "content": "hi"},),
        model="m1",
        provider="openai",
        max_tokens=5,
    )
    default, off = PromptEnvelope(**fields), PromptEnvelope(**fields, cache=False)
    assert "cache" not in json.loads(default.to_json())["options"]  # the wire shape as before
    assert json.loads(off.to_json())["options"]["cache"] is False
    assert parse_envelope(off.to_json()).cache is False and parse_envelope(default.to_json()).cache
