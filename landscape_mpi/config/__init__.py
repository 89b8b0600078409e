"""Bottom layer: every option of every command declared once (typed dataclasses), errors and exit codes."""
