"""Names of the agent root's configuration file and of the agent's environment variables
(a leaf: the root and the settings both read them)."""

ENV_PREFIX = "OBS_AGENT_"
CONFIG_NAME = "deployment_config.json"
# Env vars with our prefix that are not settings: the CLI's own, and the test hook.
NON_SETTING_ENV = {"OBS_AGENT_ROOT", "OBS_AGENT_DIE_AT", "OBS_AGENT_VERBOSE"}
