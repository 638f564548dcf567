"""Output modes (`output.mode`): what a run may do with what its location already holds.

Deciding a mode deletes nothing. `overwrite` starts a new run beside the published snapshot;
the old marker and its files stay readable until the new run publishes (snapshot.py), and only
then does garbage collection remove the files no marker lists.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.output.fingerprint import fingerprint_diff, same_fingerprint
from workers.output.layout import MANIFEST_FILE, PARTIAL_FILE, RUN_ID_RE, SUCCESS_FILE, new_run_id
from workers.output.output_mode import OutputMode


class OutputExistsError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunSlot:
    """Where a run writes: `data/<run_id>/`, with the shards already committed there (resume) and
    the marker published before this run started (None when there is none)."""

    run_id: str
    resumed: bool
    committed: frozenset[str]
    previous: dict | None


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def prepare_run(location, mode: str, fingerprint: dict) -> RunSlot:
    """The run slot of an inference run in `mode`; OutputExistsError when the mode refuses."""
    mode = OutputMode(mode)
    previous = location.snapshot()
    if mode is OutputMode.ERROR_IF_EXISTS:
        names = location.occupants()
        if names:
            raise OutputExistsError(f"output {location.uri} already holds {len(names)} object(s) ({_listed(names)}); "
                                    "use output.mode: overwrite, resume or retry_errors")
        return RunSlot(new_run_id(), False, frozenset(), None)
    if mode is OutputMode.OVERWRITE:
        return RunSlot(new_run_id(), False, frozenset(), previous)
    if mode is OutputMode.RESUME:
        return _resume(location, fingerprint, previous)
    return _retry_errors(location, fingerprint, previous)


def _resume(location, fingerprint: dict, previous: dict | None) -> RunSlot:
    planned = location.read_manifest()
    if planned is None:  # nothing started here: a fresh run
        return RunSlot(new_run_id(), False, frozenset(), previous)
    run_id = planned.get("run_id")
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or "fingerprint" not in planned:
        raise OutputExistsError(f"output {location.uri}: {MANIFEST_FILE} was written by an older llmbatch "
                                "(no run_id or fingerprint), so this run cannot be checked against it; "
                                "use output.mode: overwrite")
    if not same_fingerprint(planned["fingerprint"], fingerprint):
        changes = "\n  ".join(fingerprint_diff(planned["fingerprint"], fingerprint))
        raise OutputExistsError(f"output {location.uri} holds run {run_id} of a different job; resume continues "
                                f"only the same run, and this changed:\n  {changes}\n"
                                "use output.mode: overwrite to start a new run (the published output stays "
                                "until the new one is published)")
    return RunSlot(run_id, True, frozenset(location.committed_shards(run_id)), previous)


def _retry_errors(location, fingerprint: dict, previous: dict | None) -> RunSlot:
    if previous is None or "files" not in previous:
        raise OutputExistsError(f"output {location.uri} has no published snapshot ({SUCCESS_FILE} or "
                                f"{PARTIAL_FILE}) whose errors could be retried; run the job first "
                                "(output.mode: resume or overwrite)")
    if not same_fingerprint(previous.get("fingerprint"), fingerprint):
        changes = "\n  ".join(fingerprint_diff(previous.get("fingerprint"), fingerprint))
        raise OutputExistsError(f"output {location.uri}: retry_errors redoes the error rows of the published run, "
                                f"but this manifest differs from it:\n  {changes}\n"
                                "use output.mode: overwrite (or resume) for a changed job")
    return RunSlot(new_run_id(), False, frozenset(), previous)


def prepare_model(location, mode: str) -> dict | None:
    """A training output (a model folder): the earlier summary when there is nothing to do.

    It counts only once finished (`_SUCCESS.json`): `error_if_exists` refuses a finished one and
    `resume` of a finished one returns its summary. Otherwise the run goes ahead and the marker
    is withdrawn (the only object deleted: llmbatch wrote it), because the export replaces the
    model's files by name and a reader must not take a half-replaced folder for a finished
    model. Nothing else in the folder is touched.
    """
    mode = OutputMode(mode)
    finished = location.success()
    if mode is OutputMode.RETRY_ERRORS:
        raise OutputExistsError("output.mode: retry_errors applies to inference outputs, not to a trained model")
    if finished is not None and mode is OutputMode.ERROR_IF_EXISTS:
        raise OutputExistsError(f"output {location.uri} already holds a trained model "
                                "(output.mode: error_if_exists); use overwrite or resume")
    if finished is not None and mode is OutputMode.RESUME:
        return finished
    if finished is not None:
        location.withdraw_marker(SUCCESS_FILE)
    return None
