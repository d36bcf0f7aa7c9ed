"""tandem_operator."""
