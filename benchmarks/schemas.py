"""The JSON schemas and requests of the structured-output benchmarks (data only: no imports, so that
scripts run in other venvs can read it)."""

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "languages": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}
FUNCTION = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
        "parameters": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "type": {"enum": ["int", "str", "float", "list", "bool"]}},
                "required": ["name", "type"],
                "additionalProperties": False,
            },
        },
        "returns": {"enum": ["int", "str", "float", "list", "bool", "None"]},
    },
    "required": ["name", "parameters", "returns"],
    "additionalProperties": False,
}
BUG = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "severity": {"enum": ["low", "medium", "high", "critical"]},
        "steps": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "component": {"type": "string"},
    },
    "required": ["title", "severity", "steps", "component"],
    "additionalProperties": False,
}
BOOK = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "author": {"type": "string"},
        "year": {"type": "integer"},
        "genres": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "rating": {"type": "number"},
    },
    "required": ["title", "author", "year", "genres", "rating"],
    "additionalProperties": False,
}
TESTS = {
    "type": "object",
    "properties": {
        "function": {"type": "string"},
        "cases": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"input": {"type": "string"}, "expected": {"type": "string"}},
                "required": ["input", "expected"],
                "additionalProperties": False,
            },
            "maxItems": 3,
        },
    },
    "required": ["function", "cases"],
    "additionalProperties": False,
}
REQUESTS = [  # (schema, what to ask for)
    (PERSON, "a fictional senior backend engineer"),
    (PERSON, "a fictional data scientist who writes R and Python"),
    (FUNCTION, "a Python function that merges two sorted lists"),
    (FUNCTION, "a Python function that checks whether a string is a palindrome"),
    (BUG, "a crash when a user uploads an empty CSV file"),
    (BUG, "a memory leak in a websocket server"),
    (BOOK, "a classic science fiction novel"),
    (BOOK, "a well-known book about algorithms"),
    (TESTS, "unit tests for a function that reverses a string"),
    (TESTS, "unit tests for a function that computes a factorial"),
]
