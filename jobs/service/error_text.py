"""The error text a tenant sees for a failed job: plain, and free of the cluster's internals.

Errors from Ray and the runners arrive with terminal colour codes, node IP addresses, hostnames
and pids (`(RunnerActor pid=4242, ip=10.0.3.7)`). Those say nothing useful to a tenant and tell
them about machines they must not learn about, so the text recorded in the store goes through
`tenant_error`; the full text stays in the server log, where the scheduler logs it first.
"""

from __future__ import annotations

import re
import socket

# CSI sequences (colours, cursor moves) and the two-byte ESC forms.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.])")
# IPv6: the full eight groups, or a compressed form with "::" (so a time like 12:30:45 stays).
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}(?![\w:])"
                   r"|(?<![\w:])(?:[0-9a-fA-F]{1,4}:){1,6}:(?:[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{1,4})*)?(?![\w:])"
                   r"|(?<![\w:])::(?:[0-9a-fA-F]{1,4}:){0,6}[0-9a-fA-F]{1,4}(?![\w:])")
_PID = re.compile(r"\b(pid|PID|Pid)(\s*[=:]\s*|\s+)\d+")
_IP_FIELD = re.compile(r"\b(ip|node_ip|node_ip_address)(\s*=\s*)[\w.:-]+")
_HOST_FIELD = re.compile(r"\b(host|hostname|node_name)(\s*=\s*)[\w.-]+")
_NODE_ID = re.compile(r"\b[0-9a-f]{56}\b")  # Ray node, worker and actor ids
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MAX_CHARS = 4000


def tenant_error(text: str | None, *, hostnames: tuple[str, ...] | None = None) -> str | None:
    """`text` without colour codes, IP addresses, hostnames, pids or Ray ids (each replaced by a
    placeholder), cut to MAX_CHARS. `hostnames` defaults to this machine's names."""
    if text is None:
        return None
    out = _ANSI.sub("", str(text))
    out = _CONTROL.sub("", out)
    out = _PID.sub(lambda m: f"{m.group(1)}{m.group(2)}<pid>", out)
    out = _IP_FIELD.sub(lambda m: f"{m.group(1)}{m.group(2)}<ip>", out)
    out = _HOST_FIELD.sub(lambda m: f"{m.group(1)}{m.group(2)}<host>", out)
    out = _IPV4.sub("<ip>", out)
    out = _IPV6.sub("<ip>", out)
    out = _NODE_ID.sub("<id>", out)
    for name in sorted(hostnames if hostnames is not None else _local_names(), key=len, reverse=True):
        if len(name) >= 3:
            out = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", "<host>", out, flags=re.IGNORECASE)
    out = out.strip()
    return out if len(out) <= MAX_CHARS else out[:MAX_CHARS - 1] + "…"


def _local_names() -> tuple[str, ...]:
    """This machine's hostname, full and short (nodes of a real cluster show up as IPs in Ray's
    messages, which the patterns above already cover). "localhost" says nothing and stays."""
    name = socket.gethostname()
    return tuple({n for n in (name, name.split(".")[0]) if n and n != "localhost"})
