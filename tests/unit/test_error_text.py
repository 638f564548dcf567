"""The error text recorded for a tenant: no colour codes, IPs, hostnames, pids or Ray ids."""

from __future__ import annotations

import socket

from jobs.service.error_text import MAX_CHARS, tenant_error

RAY_ERROR = ("\x1b[36mray::RunnerActor.run()\x1b[39m (pid=48213, ip=10.0.3.7, actor_id=0123abcd)\n"
             "  File \"/srv/llmbatch/jobs/run/actor.py\", line 80\n"
             "OSError: /etc does not hold a config.json (model folder)")


def test_colour_codes_pids_and_ips_are_replaced():
    out = tenant_error(RAY_ERROR, hostnames=())
    assert "\x1b" not in out and "[36m" not in out
    assert "48213" not in out and "pid=<pid>" in out
    assert "10.0.3.7" not in out and "ip=<ip>" in out
    assert "OSError: /etc does not hold a config.json (model folder)" in out


def test_bare_addresses_ports_and_ipv6():
    out = tenant_error("raylet at 192.168.1.20:6379 and fe80::1 and 2001:db8:0:0:0:0:2:1 died", hostnames=())
    assert out == "raylet at <ip> and <ip> and <ip> died"


def test_pid_spellings():
    assert tenant_error("worker PID 77 exited; pid: 78; pid=79", hostnames=()) == \
        "worker PID <pid> exited; pid: <pid>; pid=<pid>"


def test_hostnames_and_ray_ids():
    node = "ab" * 28
    out = tenant_error(f"node gpu-node-7.internal (host=gpu-node-7) lost; node id {node}",
                       hostnames=("gpu-node-7.internal", "gpu-node-7"))
    assert "gpu-node-7" not in out and node not in out
    assert out == "node <host> (host=<host>) lost; node id <id>"


def test_this_machines_name_by_default():
    name = socket.gethostname()
    if len(name) < 3:
        return  # too short to replace safely (it would eat ordinary words)
    assert name not in tenant_error(f"the raylet on {name} died")


def test_ordinary_text_is_kept():
    text = "input.uri: s3://team-a/in/*.parquet matched no file at 12:30:45 (version 1.2.3)"
    assert tenant_error(text, hostnames=()) == text


def test_none_and_length():
    assert tenant_error(None) is None
    out = tenant_error("x" * (MAX_CHARS * 2), hostnames=())
    assert len(out) == MAX_CHARS
