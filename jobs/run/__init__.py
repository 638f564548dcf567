"""Running one job: the run protocol (`protocol`), one runner per manifest kind (`inference`,
`training`, chosen in `runners`), what a run reports (`results`, `progress`) and the detached
actor that runs a job for the service (`actor`)."""
