"""Password databases (is this the password?) and user databases (where is the mail?)."""
