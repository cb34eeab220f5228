"""The CLI's commands, one module per area. Each defines plain click commands; dlc.cli.COMMANDS names them."""
