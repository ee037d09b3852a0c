"""obs-agent: the server side of obsdeploy (SPEC §3-§9)."""
