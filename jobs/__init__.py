"""jobs: the control plane - manifests, the job runner, store, scheduler, API and CLI."""
