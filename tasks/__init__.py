"""Input generators and metrics per dataset."""
