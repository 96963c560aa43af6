"""A large public-API-shaped OpenAPI 3.0 definition, generated (never committed).

Shaped like GitHub's REST description (about 10 MB of YAML: ~1,000 operations, path
templates with several parameters, parameters, responses and examples by ``$ref`` to
``components``, large schemas and examples, vendor extensions of its own), so
``twistedgw check`` can be measured on something of that size and shape.
"""

from __future__ import annotations

from typing import Any

_METHODS = ("get", "post", "patch", "delete", "put")


def _schema(i: int, n_schemas: int) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for p in range(24):
        kind = p % 6
        name = f"field_{p}_{i}"
        if kind == 0:
            props[name] = {"type": "string", "description": f"The {name} of item {i}.",
                           "example": f"value-{i}-{p}"}
        elif kind == 1:
            props[name] = {"type": "integer", "format": "int64", "example": i * p}
        elif kind == 2:
            props[name] = {"type": "boolean", "nullable": True}
        elif kind == 3:
            props[name] = {"$ref": f"#/components/schemas/item-{(i + p) % n_schemas}"}
        elif kind == 4:
            item = f"#/components/schemas/item-{(i * 7 + p) % n_schemas}"
            props[name] = {"type": "array", "items": {"$ref": item}}
        else:
            props[name] = {"type": "string", "enum": ["open", "closed", "all"], "default": "open"}
    return {"title": f"Item {i}", "description": f"An item of kind {i}.", "type": "object",
            "properties": props, "required": [f"field_0_{i}", f"field_1_{i}"]}


def _example(i: int) -> dict[str, Any]:
    return {"summary": f"Example {i}", "value": {
        f"key_{k}": {"id": i * 100 + k, "url": f"https://api.example.com/items/{i}/{k}",
                     "name": f"name {i} {k}", "flags": [True, False, k % 2 == 0],
                     "nested": {"a": "x" * 40, "b": list(range(8))}}
        for k in range(12)}}


def definition(operations: int = 1000, schemas: int = 900, examples: int = 900) -> dict[str, Any]:
    """The document as data (``json.dumps`` or ``yaml.safe_dump`` it)."""
    components: dict[str, Any] = {
        "parameters": {
            "owner": {"name": "owner", "in": "path", "required": True,
                      "schema": {"type": "string"}, "description": "The account owner."},
            "repo": {"name": "repo", "in": "path", "required": True,
                     "schema": {"type": "string"}, "description": "The repository."},
            "per-page": {"name": "per_page", "in": "query",
                         "schema": {"type": "integer", "default": 30, "maximum": 100}},
            "page": {"name": "page", "in": "query", "schema": {"type": "integer", "default": 1}},
        },
        "responses": {
            "not_found": {"description": "Resource not found", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/basic-error"}}}},
        },
        "schemas": {"basic-error": {"type": "object", "properties": {
            "message": {"type": "string"}, "documentation_url": {"type": "string"}}}},
        "examples": {},
    }
    for i in range(schemas):
        components["schemas"][f"item-{i}"] = _schema(i, schemas)
    for i in range(examples):
        components["examples"][f"item-{i}"] = _example(i)
    paths: dict[str, Any] = {}
    n = 0
    group = 0
    while n < operations:
        template = f"/repos/{{owner}}/{{repo}}/area{group}/things/{{thing_id}}"
        item: dict[str, Any] = {}
        for method in _METHODS[: 1 + group % 3]:
            item[method] = {
                "summary": f"Operation {n}",
                "description": f"Does thing {n}. " * 6,
                "operationId": f"area{group}/{method}-thing",
                "tags": [f"area{group % 40}"],
                "parameters": [
                    {"$ref": "#/components/parameters/owner"},
                    {"$ref": "#/components/parameters/repo"},
                    {"name": "thing_id", "in": "path", "required": True,
                     "schema": {"type": "integer"}},
                    {"$ref": "#/components/parameters/per-page"},
                    {"$ref": "#/components/parameters/page"},
                ],
                "responses": {
                    "200": {"description": "Response", "content": {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/item-{n % schemas}"},
                        "examples": {"default": {
                            "$ref": f"#/components/examples/item-{n % examples}"}}}}},
                    "404": {"$ref": "#/components/responses/not_found"},
                },
                "x-github": {"githubCloudOnly": False, "enabledForGitHubApps": True,
                             "category": f"area{group % 40}"},
            }
            n += 1
        paths[template] = item
        group += 1
    return {
        "openapi": "3.0.3",
        "info": {"version": "1.1.4", "title": "Big REST API", "description": "Generated.",
                 "license": {"name": "MIT"}},
        "tags": [{"name": f"area{i}", "description": f"Area {i}."} for i in range(40)],
        "servers": [{"url": "https://api.example.com"}],
        "paths": paths,
        "components": components,
    }
