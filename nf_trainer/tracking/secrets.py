"""Secrets never reach the store: values under config keys that look like secrets (password, token,
api_key, secret, ...) are masked in params and tags, and scrubbed from every text artifact."""
from __future__ import annotations

import re
from typing import Any

MASK = "<masked>"  # what a secret becomes: a plain YAML scalar (*** would be a YAML alias)
_SECRET_WORD = r"pass(?:word|wd)|secret|token(?!s|iz)|api_?key|access_?key|private_?key|credential"
_SECRET_KEY = re.compile(_SECRET_WORD, re.IGNORECASE)
# `password: x`, `db.password=x`, `"api_key": "x"` in free text (YAML dumps, override lists, logs);
# `${oc.env:...}` interpolations (escaped `$\{...\}` in a sweep's job overrides) are names, not values: kept
_SECRET_ASSIGNMENT = re.compile(
    rf"""([\w.\-]*(?:{_SECRET_WORD})[\w.\-]*["']?[ \t]*[=:][ \t]*)(["']?)(?!\$\\?\{{)([^\s'",}}\]]+)""", re.IGNORECASE)


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{'optimizer': {'lr': 0.1}, 'l': [1, 2]} -> {'optimizer.lr': '0.1', 'l.0': '1', 'l.1': '2'}."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else None
    if items is None:
        return {prefix: str(tree)}
    flat: dict[str, str] = {}
    for key, value in items:
        flat |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    if not flat and prefix:
        flat[prefix] = "{}" if isinstance(tree, dict) else "[]"
    return flat


def is_secret_key(key: str) -> bool:
    """`db.password`, `hf_token`, `mlflow.tags.api_key`, `aws.secret_access_key`: yes. `max_tokens`: no."""
    return any(_SECRET_KEY.search(part) for part in str(key).split("."))


def redact(tree: Any) -> Any:
    """A copy of a config tree (dicts and lists) with the values under secret-looking keys masked."""
    if isinstance(tree, dict):
        return {k: MASK if is_secret_key(k) and v is not None else redact(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree


def scrub(text: str, secrets: set[str] = frozenset()) -> str:
    """Mask `secret_key=value` assignments and every known secret value in free text."""
    text = _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text
