"""Names the agent and its users share: the agent root's configuration file, the agent's
environment variables, and every obsdeploy.* label (a leaf: every layer reads them)."""

ENV_PREFIX = "OBS_AGENT_"
CONFIG_NAME = "deployment_config.json"
# Env vars with our prefix that are not settings: the CLI's own, and the test hook.
NON_SETTING_ENV = {"OBS_AGENT_ROOT", "OBS_AGENT_DIE_AT", "OBS_AGENT_VERBOSE"}

# --- labels (docs/labels.md lists them for users) -------------------------------------------
# Release identity: set on every container the agent creates for a release (its tag).
RELEASE_LABEL = "obsdeploy.release"
# release | accessory | job, on a service of the compose file.
ROLE_LABEL = "obsdeploy.role"
# "N": release services are switched one at a time in ascending N.
ORDER_LABEL = "obsdeploy.order"
# On an accessory: the command (run in its container) whose standard output is its dump,
# taken by every deploy before the jobs; and the command that reads such a dump on stdin.
BACKUP_LABEL = "obsdeploy.backup"
RESTORE_LABEL = "obsdeploy.restore"
# On a job: "false" when running the older release cannot undo what it did (a migration).
REVERSIBLE_LABEL = "obsdeploy.reversible"
# On a release service: "true" makes it a single writer (always stop-first, never two of its
# containers at once); "false" opts a contract service out (contract services are by default).
SINGLE_WRITER_LABEL = "obsdeploy.single_writer"
