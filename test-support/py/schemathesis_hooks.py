"""Schemathesis hooks for the gateway tests (loaded with SCHEMATHESIS_HOOKS).

Why: schemathesis 4 reads a pattern's Unicode property classes (our username pattern's
`\\p{Alpha}` and `\\p{N}`) as Latin-only approximations when it makes and judges invalid data
(schemathesis/core/jsonschema/patterns.py), so it sends a username such as "ㄹ" or "𝐓he" as a
pattern violation and reports our 2xx as "schema-violating request accepted" (ST201), though
both the spec (ECMA-262 regexes, full Unicode) and the server accept it.

What: such a failure is dropped only when the whole request is valid judged by jsonschema-rs
(exact Unicode classes) against the operation's schemas as written.

The mirror case, "schema-valid request rejected" (ST202), is dropped only when the same judge
finds the request invalid after all (schemathesis' coverage phase labels some bodies positive
that miss a required field), or when the answer is the documented 422
`idempotency_key_reused`: schemathesis reuses header values across cases, and a key this user
already used for a different purchase must be refused (IETF idempotency-key draft), whatever
the schemas say. Every other failure stands.
"""
import json
from urllib.parse import unquote

import jsonschema_rs
import schemathesis
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.openapi.checks import RejectedPositiveData


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if isinstance(failure, AcceptedNegativeData):
        return not _request_is_valid(case)
    if isinstance(failure, RejectedPositiveData):
        if _error_code(response) == "idempotency_key_reused" and response.status_code == 422:
            return False
        return _request_is_valid(case)
    return True


def _error_code(response):
    try:
        return json.loads(response.content).get("error")
    except (AttributeError, TypeError, ValueError):
        return None


def _request_is_valid(case):
    spec = case.operation.schema.raw_schema
    operation = case.operation.definition.raw

    def valid(schema, value):
        # `$ref`s point into `#/components`, so the spec's components travel with the schema.
        validator = jsonschema_rs.Draft4Validator(
            {**schema, "components": spec.get("components", {})}, validate_formats=True
        )
        return validator.is_valid(value)

    containers = {"path": case.path_parameters or {}, "query": case.query or {}}
    for parameter in operation.get("parameters", []):
        values = containers.get(parameter["in"], {})
        if parameter["name"] not in values:
            if parameter.get("required"):
                return False
            continue
        value = _as_read(values[parameter["name"]], parameter["in"], parameter["schema"])
        if not valid(parameter["schema"], value):
            return False
    body = operation.get("requestBody")
    if body is not None:
        schema = body["content"].get("application/json", {}).get("schema")
        if schema is None or case.media_type != "application/json":
            return False
        if not valid(schema, case.body):
            return False
    return True


def _as_read(value, location, schema):
    """A path or query value as the server reads it: text (a path segment percent-decoded,
    schemathesis keeps it encoded), parsed when a number is declared."""
    if location == "path" and isinstance(value, str):
        value = unquote(value)
    if schema.get("type") in ("integer", "number") and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
