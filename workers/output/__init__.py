"""Where a job's output goes: `location.OutputLocation`, the one owner of its layout and commit
protocol: output modes (`modes.py`), the run fingerprint (`fingerprint.py`), published snapshots
and their garbage collection (`snapshot.py`), the `_errors` dataset (`errors_dataset.py`) and
the writer lease (`lease.py`); file names in `layout.py`."""
