"""Analysis commands: shapes, params, flops, summary, check, zoo."""
