"""The CLI's commands, one module per area; each adds its commands to dlc.cli.main."""
