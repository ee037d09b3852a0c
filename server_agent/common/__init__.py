"""The agent's leaf layer: errors and exit codes, running commands, redaction, versions,
progress, CLI helpers. The only agent code deploy_tool imports."""
