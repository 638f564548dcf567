"""The pre-flight (jobs.run.preflight): every problem of a job found before any work, all at once.

Local files and a small local model folder (a word-level tokenizer whose token counts are easy to
reason about, a short context); no Ray. S3 and the CLI are in tests/integration/test_validate_deep.py.
"""

from __future__ import annotations

import json
import os
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from cluster.storage.scope import Scope, canonical
from jobs.manifest import parse_manifest
from jobs.run.preflight import Plan, PreflightError, preflight
from jobs.run.preflight.report import plan_lines

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def word_model(folder):
    """A model folder: config (context 256), a word-level tokenizer (one token a word or mark),
    a weights file. Enough for the pre-flight, which never loads weights."""
    folder.mkdir(parents=True)
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "chat_template.jinja").write_text(CHATML)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 256,
                                                    "eos_token_id": 2}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


@pytest.fixture
def model_dir(tmp_path):
    return word_model(tmp_path / "model")


@pytest.fixture(autouse=True)
def empty_model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBATCH_CACHE", str(tmp_path / "cache"))  # no built-in model is on this node


def write(path, **columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def manifest(tmp_path, model, **over):
    data = {"name": "t", "task": "summarize", "model": str(model),
            "input": {"uri": str(tmp_path / "in")}, "output": {"uri": str(tmp_path / "out")},
            "params": {"max_new_tokens": 16}}
    for key, value in over.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return parse_manifest(data)


def texts(n, words=5):
    return [" ".join(["word"] * words) + f" {i}" for i in range(n)]


def test_a_good_job_gets_its_plan(tmp_path, model_dir):
    write(tmp_path / "in" / "a.parquet", id=["a", "b", "c"], text=texts(3))
    write(tmp_path / "in" / "b.parquet", id=["d"], text=texts(1))
    plan = preflight(manifest(tmp_path, model_dir))
    assert plan.ok and plan.problems == [], plan.problems
    assert [os.path.basename(f.uri) for f in plan.files] == ["a.parquet", "b.parquet"]
    assert plan.rows == 4 and len(plan.shards) == 2 and plan.id_type == "string" and plan.dropped == []
    assert plan.model["kind"] == "local" and "model.safetensors" in plan.model["files"]
    assert plan.est_completion_tokens == 16 * 4
    assert 4 * 20 < plan.est_prompt_tokens < 4 * 80  # the chat prompt: instructions + 6 words each
    assert not any("token lengths not checked" in w for w in plan.warnings)
    assert not (tmp_path / "out").exists()  # the probe was put and deleted, its folder too
    plan.require_ok()


def test_every_problem_is_found_at_once(tmp_path):
    write(tmp_path / "in" / "a.parquet", id=["a", "a", None], text=texts(3))
    write(tmp_path / "in" / "b.parquet", id=["x"], body=["no text column"])
    (tmp_path / "in" / "junk.parquet").write_bytes(b"not parquet")
    plan = preflight(manifest(tmp_path, "builtin:no-such-model"))
    joined = "\n".join(plan.problems)
    assert "b.parquet" in joined and "text column 'text' is missing" in joined
    assert "junk.parquet" in joined and "not a readable Parquet file" in joined
    assert "repeat an earlier 'id'" in joined and "a.parquet row 1 id 'a'" in joined
    assert "null 'id'" in joined and "a.parquet row 2" in joined
    assert any(p.startswith("model: ") and "no-such-model" in p for p in plan.problems)
    with pytest.raises(PreflightError) as caught:
        plan.require_ok()
    assert caught.value.problems == plan.problems
    back = pickle.loads(pickle.dumps(caught.value))
    assert back.problems == plan.problems and str(back) == str(caught.value)


def test_drop_leaves_rows_out_of_the_shards_and_lists_them(tmp_path, model_dir):
    write(tmp_path / "in" / "a.parquet", id=["a", "a", None, "b"], text=texts(4))
    m = manifest(tmp_path, model_dir, input={"on_duplicate_id": "drop", "on_null_id": "drop"})
    plan = preflight(m)
    assert plan.ok, plan.problems
    assert [(d["row"], d["reason"]) for d in plan.dropped] == [(1, "duplicate id"), (2, "null id")]
    assert plan.rows == 2 and plan.shards[0].skip_rows == (1, 2)
    assert any("left out" in w for w in plan.warnings)
    assert "dropped rows: 2 (1 duplicate id, 1 null id)" in plan_lines(plan, title="plan")


def test_integer_and_string_id_files_plan_string_ids(tmp_path, model_dir):
    write(tmp_path / "in" / "a.parquet", id=[1, 2], text=texts(2))
    write(tmp_path / "in" / "b.parquet", id=["x", "y"], text=texts(2))
    plan = preflight(manifest(tmp_path, model_dir))
    assert plan.ok and plan.id_type == "string"
    write(tmp_path / "in" / "c.parquet", id=[1.5], text=texts(1))
    plan = preflight(manifest(tmp_path, model_dir))
    assert any("c.parquet: double" in p for p in plan.problems)


def test_a_missing_input_and_a_missing_local_model(tmp_path):
    plan = preflight(manifest(tmp_path, tmp_path / "nowhere"))
    assert any(p.startswith("input.uri: no .parquet files found") for p in plan.problems)
    assert any(p.startswith("model: ") and "nowhere" in p for p in plan.problems)


def test_a_model_folder_without_weights(tmp_path, model_dir):
    write(tmp_path / "in" / "a.parquet", id=["a"], text=texts(1))
    (model_dir / "model.safetensors").unlink()
    plan = preflight(manifest(tmp_path, model_dir))
    assert any(p.startswith("model: ") and "weights" in p for p in plan.problems), plan.problems


def test_a_builtin_model_not_on_this_node_is_known_and_its_prompts_unchecked(tmp_path):
    write(tmp_path / "in" / "a.parquet", id=["a", "b"], text=texts(2))
    plan = preflight(manifest(tmp_path, "builtin:smollm2-135m-instruct"))
    assert plan.ok and plan.model["kind"] == "builtin"
    assert any("token lengths not checked" in w for w in plan.warnings)
    assert plan.est_prompt_tokens > 0 and plan.est_completion_tokens == 32
    assert not (tmp_path / "cache" / "models" / "smollm2-135m-instruct").exists()  # nothing fetched


def test_baseline_engine_has_no_model_check(tmp_path):
    write(tmp_path / "in" / "a.parquet", id=["a"], text=texts(1))
    plan = preflight(manifest(tmp_path, tmp_path / "nowhere", engine="baseline"))
    assert plan.ok, plan.problems
    assert plan.model == {} and plan.est_prompt_tokens == 0


def test_output_holding_the_input_is_refused(tmp_path, model_dir):
    write(tmp_path / "data" / "in.parquet", id=["a"], text=texts(1))
    m = manifest(tmp_path, model_dir, input={"uri": str(tmp_path / "data" / "in.parquet")},
                 output={"uri": str(tmp_path), "mode": "overwrite"})
    assert any("holds input files" in p and "in.parquet" in p for p in preflight(m).problems)
    m = manifest(tmp_path, model_dir, input={"uri": str(tmp_path / "data")},
                 output={"uri": str(tmp_path / "data" / "out")})
    assert any("is inside input.uri" in p for p in preflight(m).problems)
    # a symlink to the input folder is the input folder
    os.symlink(tmp_path / "data", tmp_path / "alias")
    m = manifest(tmp_path, model_dir, input={"uri": str(tmp_path / "data")}, output={"uri": str(tmp_path / "alias")})
    assert any("holds input files" in p for p in preflight(m, probe_output=False).problems)


def test_a_glob_input_beside_the_output_is_fine_unless_it_reaches_it(tmp_path, model_dir):
    write(tmp_path / "data" / "in.parquet", id=["a"], text=texts(1))
    out = {"uri": str(tmp_path / "data" / "out")}
    flat = manifest(tmp_path, model_dir, input={"uri": str(tmp_path / "data" / "*.parquet")}, output=out)
    assert preflight(flat).ok
    deep = manifest(tmp_path, model_dir, input={"uri": str(tmp_path / "data" / "**" / "*.parquet")}, output=out)
    assert any("is inside input.uri" in p for p in preflight(deep).problems)


def test_an_unwritable_output_and_error_if_exists(tmp_path, model_dir):
    write(tmp_path / "in" / "a.parquet", id=["a"], text=texts(1))
    (tmp_path / "file").write_text("a file, not a folder")
    plan = preflight(manifest(tmp_path, model_dir, output={"uri": str(tmp_path / "file" / "out")}))
    assert any(p.startswith("output.uri: ") and "not writable" in p for p in plan.problems), plan.problems
    assert preflight(manifest(tmp_path, model_dir, output={"uri": str(tmp_path / "file" / "out")}),
                     probe_output=False).ok  # no probe: not checked, nothing written
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_SUCCESS.json").write_text("{}")
    plan = preflight(manifest(tmp_path, model_dir))
    assert any("already holds 1 object(s)" in p and "error_if_exists" in p for p in plan.problems)
    assert sorted(os.listdir(tmp_path / "out")) == ["_SUCCESS.json"]  # the probe is gone
    assert preflight(manifest(tmp_path, model_dir, output={"mode": "overwrite"})).ok


def test_a_classify_task_with_too_many_labels_fails_every_row(tmp_path, model_dir):
    write(tmp_path / "in" / "a.parquet", id=["a", "b"], text=texts(2))
    labels = [f"label{i}" for i in range(300)]  # the prompt lists them all: over a 256-token context
    plan = preflight(manifest(tmp_path, model_dir, task={"kind": "classify", "labels": labels}))
    assert any("the prompt without any row text is already" in p and "300 labels" in p
               and "every row would fail" in p for p in plan.problems), plan.problems
    plan = preflight(manifest(tmp_path, model_dir, task={"kind": "classify", "labels": ["yes", "no"]}))
    assert plan.ok and plan.est_completion_tokens == 2 * 2  # one token a label, then end-of-turn


def test_long_prompts_a_warning_when_some_a_problem_when_all_fail(tmp_path, model_dir):
    write(tmp_path / "in" / "a.parquet", id=["a", "b", "c", "d"], text=texts(3) + texts(1, words=400))
    plan = preflight(manifest(tmp_path, model_dir))
    [warning] = [w for w in plan.warnings if w.startswith("prompts:")]
    assert "1 of 4 sampled prompts (25%)" in warning and "240 tokens" in warning and "truncate" in warning
    write(tmp_path / "in" / "a.parquet", id=["a", "b"], text=texts(2, words=400))
    m = manifest(tmp_path, model_dir, params={"max_new_tokens": 16, "on_long_input": "error"})
    assert any("every one of 2 of 2 sampled prompts" in p for p in preflight(m).problems)
    m = manifest(tmp_path, model_dir, params={"max_new_tokens": 300})
    assert any("leaves no room" in p for p in preflight(m).problems)


def test_sample_rows_limits_what_is_tokenized(tmp_path, model_dir):
    write(tmp_path / "in" / "a.parquet", id=[str(i) for i in range(10)], text=texts(9) + texts(1, words=400))
    assert not any(w.startswith("prompts:") for w in preflight(manifest(tmp_path, model_dir), sample_rows=5).warnings)


def test_references_that_cannot_be_read_are_a_problem(tmp_path, model_dir):
    write(tmp_path / "in" / "a.parquet", id=["a"], text=texts(1))
    m = manifest(tmp_path, model_dir, evaluate={"reference_column": "ref", "references_uri": str(tmp_path / "refs")})
    assert any(p.startswith("evaluate.references_uri: ") for p in preflight(m).problems)


def test_an_input_outside_the_scope_is_a_problem_not_a_crash(tmp_path, model_dir):
    write(tmp_path / "in" / "a.parquet", id=["a"], text=texts(1))
    scope = Scope(read=(canonical(str(tmp_path / "elsewhere")),), write=(canonical(str(tmp_path / "out")),))
    plan = preflight(manifest(tmp_path, model_dir), scope)
    assert any(p.startswith("input.uri: ") for p in plan.problems), plan.problems


def test_training_checks_model_data_and_output(tmp_path):
    data = {"version": 1, "kind": "training", "name": "ft", "task": "finetune", "objective": "causal_lm",
            "model": {"uri": "builtin:no-such-model"}, "data": {"train": str(tmp_path / "missing"), "seq_len": 32},
            "training": {"max_steps": 2}, "checkpoint": {"uri": str(tmp_path / "ckpt")},
            "output": {"uri": str(tmp_path / "model")}}
    plan = preflight(parse_manifest(data))
    assert any(p.startswith("model.uri: ") for p in plan.problems), plan.problems
    assert any(p.startswith("data.train: ") for p in plan.problems), plan.problems
    write(tmp_path / "train" / "a.parquet", text=texts(5))
    data.update(model={"uri": "builtin:smollm2-135m-instruct"}, data={"train": str(tmp_path / "train"), "seq_len": 32})
    plan = preflight(parse_manifest(data))
    assert plan.ok and plan.rows == 5, plan.problems
    assert any(c.startswith("output: ") and "writable" in c for c in plan.checked)
    assert any(c.startswith("checkpoint.uri: ") and "writable" in c for c in plan.checked)
    data["output"] = {"uri": str(tmp_path)}  # the model written over its own training data
    assert any("holds input files" in p for p in preflight(parse_manifest(data)).problems)


def test_plan_lines_show_files_problems_and_warnings(tmp_path, model_dir):
    write(tmp_path / "in" / "a.parquet", id=["a", "a"], text=texts(2))
    plan = preflight(manifest(tmp_path, model_dir))
    lines = plan_lines(plan, title="plan: t", model_ref=str(model_dir), id_column="id")
    text = "\n".join(lines)
    assert "input: 1 file(s)" in text and "a.parquet" in text and "2 rows" in text and "shards: 1" in text
    assert "model: " in text and "identity " in text and "problems (1): the job would be refused" in text
    assert isinstance(Plan().file_rows(), dict)


def test_a_broken_tokenizer_is_a_model_problem(tmp_path, model_dir):
    write(tmp_path / "in" / "a.parquet", id=["a"], text=texts(1))
    (model_dir / "tokenizer.json").write_text("{not json")
    plan = preflight(manifest(tmp_path, model_dir))
    assert any(p.startswith("model: ") and "tokenizer cannot be read" in p for p in plan.problems), plan.problems


def test_an_unreadable_file_first_does_not_stop_the_prompt_check(tmp_path, model_dir):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "0-junk.parquet").write_bytes(b"not parquet")
    write(tmp_path / "in" / "1-good.parquet", id=["a"], text=texts(1))
    plan = preflight(manifest(tmp_path, model_dir))
    assert any("0-junk.parquet" in p for p in plan.problems)
    assert any(c.startswith("prompts: 1 sampled row(s) tokenized") for c in plan.checked), plan.checked
