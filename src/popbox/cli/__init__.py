"""The `popbox` command."""
