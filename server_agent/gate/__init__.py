"""The health gate: criteria built once from the settings, probes, and the one gate loop that
both backends feed with their observations."""
