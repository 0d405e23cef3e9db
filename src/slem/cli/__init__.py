"""The ``slem`` command line (typer). Every user error exits with code 2 and one line."""
