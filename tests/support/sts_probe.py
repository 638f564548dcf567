"""A runner (run_job's signature) for the tenant-credential test: it copies one S3 object inside
the job's prefixes through cluster.storage, in the job's runner actor, and writes beside it the
access key id that actor signed with, so the test can match it to the AssumeRole moto recorded.
Started by the service with `serve --runner tests.support.sts_probe:probe_run`.
"""

from __future__ import annotations

from cluster import storage
from cluster.storage import s3_client


def probe_run(manifest, *, job_id, ray_address=None, on_progress=None, cancel=None, show_progress=False):
    out = manifest.output.uri
    storage.write_bytes(storage.join(out, "copy.txt"), storage.read_bytes(storage.join(manifest.input.uri, "rows.txt")))
    settings = storage.s3_settings()  # what the service handed this runner actor
    used = s3_client.session(settings).get_credentials().get_frozen_credentials().access_key
    storage.write_bytes(storage.join(out, "signed-with.txt"), f"{used} {settings.assumes_role}".encode())
    return {"status": "succeeded", "error": None, "summary": {}, "output_uri": out}
