"""The job service's core, without HTTP: the store, the queue and admission, the job scheduler
and the Ray runners it drives, cron schedules, and token auth."""
