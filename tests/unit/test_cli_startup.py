"""The command line starts light: building the parser (every command registers its subcommands)
loads none of the heavy libraries, which only the commands that use them import. Before, every
`llmbatch` call (`status`, `list`, `--help`) imported scikit-learn, matplotlib, SQLAlchemy, boto3
and pyarrow first: 4-8 s on 2 cores, against about 0.6 s now."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.paths import REPO

HEAVY = ("sklearn", "matplotlib", "rouge_score", "sqlalchemy", "boto3", "pyarrow", "ray", "torch",
         "transformers", "tokenizers", "pydantic", "fastapi")

PROBE = """
import json, sys
from jobs.cli.main import build_parser
build_parser().format_help()
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_building_the_parser_imports_no_heavy_library():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not loaded & set(HEAVY), f"imported when the parser is built: {sorted(loaded & set(HEAVY))}"
