"""Scopes checked where storage opens a file: segments, "..", symlinked prefixes, S3 prefixes,
and symlinks (in folders, globs, swapped in after a check) never followed out of the scope."""

from __future__ import annotations

import os
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import storage
from cluster.storage import local
from cluster.storage.scope import ANY, Scope, ScopeError, canonical, canonical_prefix
from workers.inference.shards import plan_shards, read_shard
from workers.model_resolver import resolve_model
from workers.output.layout import new_run_id
from workers.output.lease import OutputLease
from workers.output.location import OutputLocation


def scope_of(*prefixes: str, who: str = "token 'a'") -> Scope:
    canon = tuple(canonical_prefix(p) for p in prefixes)
    return Scope(read=canon, write=canon, who=who)


@pytest.fixture()
def tenants(tmp_path):
    a, b = tmp_path / "tenant-a", tmp_path / "tenant-b"
    a.mkdir()
    b.mkdir()
    pq.write_table(pa.table({"id": ["b1"], "text": ["tenant-b secret"]}), b / "secret.parquet")
    return a, b, scope_of(str(a))


# ---- the check itself -------------------------------------------------------------------------

def test_prefixes_match_whole_segments(tmp_path):
    scope = scope_of(str(tmp_path / "data"))
    assert scope.may_read(str(tmp_path / "data" / "x.parquet"))
    assert scope.may_read(str(tmp_path / "data"))
    assert not scope.may_read(str(tmp_path / "data-other" / "x.parquet"))
    assert not scope.may_write(str(tmp_path / "dat"))


def test_dot_dot_is_resolved_before_the_check(tmp_path):
    scope = scope_of(str(tmp_path / "a"))
    assert not scope.may_read(f"{tmp_path}/a/../b/x.parquet")
    assert scope.may_read(f"{tmp_path}/a/sub/../x.parquet")


def test_symlinked_prefix_is_compared_by_its_real_path(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    scope = scope_of(str(tmp_path / "alias"))  # the token names a symlinked folder
    assert scope.may_read(str(real / "x.parquet"))
    assert scope.may_read(str(tmp_path / "alias" / "x.parquet"))
    assert canonical(str(tmp_path / "alias")) == str(real) + "/"


def test_s3_prefixes_by_segment_and_no_dot_dot():
    scope = scope_of("s3://team-a/")
    assert scope.may_read("s3://team-a/in/x.parquet")
    assert not scope.may_read("s3://team-a-evil/x.parquet")
    assert not scope.may_write("s3://team-b/out/")
    assert not scope.may_read("s3://team-a/../team-b/x")
    with pytest.raises(ScopeError, match="s3://team-b/x.*outside its allowed prefixes"):
        storage.read_bytes("s3://team-b/x", scope=scope)  # refused before any S3 call
    with pytest.raises(ScopeError, match="may not write s3://team-b/ck"):
        storage.delete_prefix("s3://team-b/ck", scope=scope)


def test_unrestricted_and_pickling():
    assert Scope.unrestricted().read == (ANY,) and Scope.unrestricted().is_unrestricted
    err = pickle.loads(pickle.dumps(ScopeError("/x", "read", "token 'a'")))
    assert str(err) == "token 'a' may not read /x: outside its allowed prefixes"


def test_the_process_scope_is_used_when_none_is_passed(tenants):
    a, b, scope = tenants
    with storage.scoped(scope):
        with pytest.raises(ScopeError):
            storage.read_bytes(str(b / "secret.parquet"))
    assert storage.read_bytes(str(b / "secret.parquet"))  # restored: unrestricted again


# ---- reads --------------------------------------------------------------------------------------

def test_folder_with_symlink_out_is_refused_naming_the_file(tenants):
    a, b, scope = tenants
    pq.write_table(pa.table({"id": ["a1"], "text": ["mine"]}), a / "mine.parquet")
    os.symlink(b / "secret.parquet", a / "theirs.parquet")
    with pytest.raises(ScopeError, match="theirs.parquet"):
        plan_shards(str(a), {"id": "id", "text": "text"}, scope=scope)


def test_glob_matching_etc_passwd_is_refused_not_opened(tenants, monkeypatch):
    a, _, scope = tenants
    os.symlink("/etc/passwd", a / "passwd.parquet")
    opened = []
    monkeypatch.setattr(local, "_open_nofollow", lambda *args: opened.append(args))
    with pytest.raises(ScopeError, match="passwd.parquet"):
        storage.list_files(str(a / "*.parquet"), scope=scope)
    assert opened == []


def test_symlinked_folder_inside_a_folder_is_not_entered(tenants):
    a, b, scope = tenants
    pq.write_table(pa.table({"id": ["a1"], "text": ["mine"]}), a / "mine.parquet")
    os.symlink(b, a / "sub")
    assert [r.uri for r in storage.list_files(str(a), scope=scope)] == [str(a / "mine.parquet")]


def test_symlink_inside_the_scope_is_allowed(tenants):
    a, _, scope = tenants
    pq.write_table(pa.table({"id": ["a1"], "text": ["mine"]}), a / "mine.parquet")
    os.symlink(a / "mine.parquet", a / "alias.parquet")
    assert storage.read_bytes(str(a / "alias.parquet"), scope=scope) == (a / "mine.parquet").read_bytes()


def test_input_swapped_for_a_symlink_after_planning_is_refused_at_read(tenants):
    a, b, scope = tenants
    pq.write_table(pa.table({"id": ["a1"], "text": ["mine"]}), a / "in.parquet")
    [shard] = plan_shards(str(a / "in.parquet"), {"id": "id", "text": "text"}, scope=scope)
    os.replace(a / "in.parquet", a / "old.parquet")
    os.symlink(b / "secret.parquet", a / "in.parquet")
    with pytest.raises(ScopeError, match="in.parquet"):
        read_shard(shard, ["id", "text"], scope)


def test_a_name_swapped_between_check_and_open_is_refused(tenants, monkeypatch):
    """The race itself: realpath sees a plain file, the open meets a symlink (O_NOFOLLOW)."""
    a, b, scope = tenants
    target = a / "in.parquet"
    target.write_bytes(b"mine")
    real_realpath = os.path.realpath

    def swap_after_resolving(path):
        resolved = real_realpath(path)
        if path == str(target):
            target.unlink()
            target.symlink_to(b / "secret.parquet")
        return resolved

    monkeypatch.setattr(local.os.path, "realpath", swap_after_resolving)
    with pytest.raises(ScopeError, match="in.parquet"):
        storage.read_bytes(str(target), scope=scope)


def test_opened_file_is_checked_by_its_real_path(tenants, monkeypatch):
    """Even if a swap got past O_NOFOLLOW, the /proc/self/fd path of what was opened is checked."""
    a, b, scope = tenants
    (a / "x").write_bytes(b"mine")
    monkeypatch.setattr(local, "_fd_path", lambda fd, fallback: str(b / "secret.parquet"))
    with pytest.raises(ScopeError, match="may not read"):
        storage.read_bytes(str(a / "x"), scope=scope)


def test_model_folder_with_a_symlink_out_is_refused(tenants):
    a, _, scope = tenants
    model = a / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    os.symlink("/etc/passwd", model / "chat_template.jinja")
    with pytest.raises(ScopeError, match="chat_template.jinja"):
        resolve_model(str(model), scope)
    with pytest.raises(ScopeError):
        resolve_model("/etc", scope)
    assert resolve_model(str(model)) == model.resolve()  # unrestricted: as before


# ---- writes and deletes -------------------------------------------------------------------------

def test_output_folder_swapped_for_symlink_refuses_every_write(tenants):
    a, b, scope = tenants
    os.symlink(b, a / "out")
    out = OutputLocation.at(str(a / "out"), scope)
    before = sorted(os.listdir(b))
    with pytest.raises(ScopeError, match="may not write"):
        out.write_manifest({"x": 1})
    with pytest.raises(ScopeError):
        out.commit_part(new_run_id(), "abc", pa.table({"id": ["1"]}))
    with pytest.raises(ScopeError):
        out.publish_model({})
    with pytest.raises(ScopeError):
        out.withdraw_marker("_SUCCESS.json")
    with pytest.raises(ScopeError):
        OutputLease.acquire(out, "job-a")
    assert sorted(os.listdir(b)) == before


def test_part_path_swapped_for_symlink_is_refused(tenants):
    a, b, scope = tenants
    run = new_run_id()
    (a / "out" / "data" / run).mkdir(parents=True)
    out = OutputLocation.at(str(a / "out"), scope)
    os.symlink(b / "stolen.parquet", a / "out" / "data" / run / "part-abc.parquet")
    with pytest.raises(ScopeError, match="part-abc.parquet"):
        out.commit_part(run, "abc", pa.table({"id": ["1"]}))
    assert not (b / "stolen.parquet").exists()


def test_overwrite_never_deletes_through_a_symlink(tenants):
    a, b, scope = tenants
    os.symlink(b, a / "ck")
    with pytest.raises(ScopeError, match="ck"):
        storage.delete_prefix(str(a / "ck"), scope=scope)
    (a / "ck2").mkdir()
    os.symlink(b / "secret.parquet", a / "ck2" / "link")
    storage.delete_prefix(str(a / "ck2"), scope=scope)  # removes the link, not its target
    assert not (a / "ck2").exists() and (b / "secret.parquet").exists()


def test_writes_inside_the_scope_work(tenants):
    a, _, scope = tenants
    out = OutputLocation.at(str(a / "out" / "run"), scope)
    out.write_manifest({"x": 1})
    run = new_run_id()
    assert out.commit_part(run, "abc", pa.table({"id": ["1"]}))
    assert not out.commit_part(run, "abc", pa.table({"id": ["2"]}))
    assert out.read_manifest() == {"x": 1} and out.read_part_at(out.part_path(run, "abc")).num_rows == 1
    storage.delete(out.path("_manifest.json"), scope=scope)
    assert out.read_manifest() is None
