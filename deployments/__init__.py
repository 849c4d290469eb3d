"""Deployments: when and with which parameters the archive flow runs unattended."""
