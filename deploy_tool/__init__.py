"""obsdeploy: release, deploy and roll back from a laptop or CI (SPEC §10)."""
