"""What an inference manifest asks of every shard: the task, the sampling and the `ShardWork`."""

from __future__ import annotations

from collections.abc import Iterable

from jobs.manifest import InferenceManifest
from jobs.run.calibration import calibration_texts, needs_sample
from jobs.run.examples import fewshot_spec
from llm_core.engine.sampling import SamplingParams
from llm_core.fewshot import FewShotSpec
from llm_core.tasks import TaskSpec, default_sampling
from workers.inference.shard_task import ShardWork
from workers.output.location import OutputLocation


def task_spec(m: InferenceManifest, fewshot: FewShotSpec | None = None,
              calibration: tuple[str, ...] | None = None) -> TaskSpec:
    """`fewshot`: the pre-flight's (plan.examples), needed when task.examples names a file;
    inline examples are taken from the manifest when it is None. `calibration`: the job's
    calibration sample (jobs.run.calibration), for `calibrate: batch`."""
    t = m.task
    if fewshot is None and getattr(t, "examples", None) is not None:
        fewshot = fewshot_spec(m)  # inline items (a file's examples must come loaded: it refuses)
    return TaskSpec(
        kind=t.kind, target_language=getattr(t, "target_language", None),
        source_language=getattr(t, "source_language", "English"), labels=tuple(getattr(t, "labels", ()) or ()),
        prompt_template=getattr(t, "prompt_template", None), system_prompt=t.system_prompt,
        instructions=getattr(t, "instructions", None), style=getattr(t, "style", "one_sentence"),
        fewshot=fewshot, calibrate=getattr(t, "calibrate", True), calibration_texts=calibration,
    )


def sampling_params(m: InferenceManifest) -> SamplingParams:
    p, defaults = m.params, default_sampling(m.task.kind)
    return SamplingParams(
        max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
        repetition_penalty=p.repetition_penalty if p.repetition_penalty is not None else defaults["repetition_penalty"],
        no_repeat_ngram_size=p.no_repeat_ngram_size if p.no_repeat_ngram_size is not None
        else defaults["no_repeat_ngram_size"],
        stop=tuple(p.stop), seed=p.seed, n=p.n,
    )


def build_work(m: InferenceManifest, job_id: str, output: OutputLocation | None = None, *, run_id: str = "",
               id_type: str | None = None, retry_kinds: tuple[str, ...] = (),
               base_parts: dict[str, str] | None = None, fewshot: FewShotSpec | None = None,
               file_rows: Iterable[tuple[str, int]] | None = None) -> ShardWork:
    """`fewshot`: the examples the pre-flight loaded (plan.examples), when task.examples names a file.
    With an `output` (a job's run), `calibrate: batch` gets the job's calibration sample, read
    here in the output's scope; without one, each worker call calibrates on its own rows.
    `file_rows`: the input files' rows the pre-flight found (Plan.file_rows), so the sample
    opens only the files it draws from."""
    calibration = (calibration_texts(m, output.scope, file_rows=file_rows)
                   if output is not None and needs_sample(m) else None)
    return ShardWork(
        job_id=job_id, output=output or OutputLocation.at(m.output.uri), task=task_spec(m, fewshot, calibration),
        sampling=sampling_params(m),
        id_column=m.input.id_column, text_column=m.input.text_column,
        language_column=getattr(m.task, "target_language_column", None),
        max_input_tokens=m.params.max_input_tokens, on_long_input=m.params.on_long_input,
        run_id=run_id, id_type=id_type, retry_kinds=retry_kinds, base_parts=dict(base_parts or {}),
    )
