"""Manifests never carry credentials: refuse fields that look like keys or secrets.

Credentials come from the environment (the AWS default chain, a pod's service account), so a
manifest can be stored, logged and shared without leaking anything.
"""

from __future__ import annotations

import re
from typing import Any

from jobs.manifest.errors import FieldError

_SECRET_NAME = re.compile(
    r"(access[_-]?key|secret|password|passwd|token|credential|session[_-]?key|api[_-]?key)", re.I
)
# Words that contain "token" but name model settings, not credentials.
_ALLOWED = re.compile(r"(tokenizer|tokens)", re.I)
# Values shaped like AWS access key ids, whatever field they sit in.
_SECRET_VALUE = re.compile(r"^(AKIA|ASIA)[A-Z0-9]{16}$")


def find_credential_fields(data: Any, path: str = "") -> list[FieldError]:
    found: list[FieldError] = []
    if isinstance(data, dict):
        for key, value in data.items():
            child = f"{path}.{key}" if path else str(key)
            if _SECRET_NAME.search(_ALLOWED.sub("", str(key))):
                found.append(
                    FieldError(child, "looks like a credential: manifests must not carry secrets; "
                               "use the environment (AWS_* variables, ~/.aws, the pod's role)")
                )
            else:
                found += find_credential_fields(value, child)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += find_credential_fields(value, f"{path}[{i}]")
    elif isinstance(data, str) and _SECRET_VALUE.match(data.strip()):
        found.append(FieldError(path, "value looks like an AWS access key id: manifests must not carry secrets"))
    return found
