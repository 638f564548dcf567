"""Where a job's output goes: `location.OutputLocation`, the one owner of its layout and commit
protocol (output modes, parts, totals, `_SUCCESS.json`)."""
