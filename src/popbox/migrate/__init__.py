"""Moving to popbox from another server: reading its configuration (`dovecot_conf`) and
turning it into a popbox.toml (`dovecot_map`)."""
