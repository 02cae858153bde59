"""popbox's own benchmark: popbox and Dovecot side by side on the same mail.

`python -m bench.run` is the one command; bench/README.md explains what it measures.
"""
