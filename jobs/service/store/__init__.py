"""The job store: tables, migrations, and every read and conditional write of job rows
(state changes through the lifecycle's guard in transitions.py)."""
