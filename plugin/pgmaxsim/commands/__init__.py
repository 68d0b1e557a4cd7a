"""One module per ``pgmaxsim`` subcommand, each with ``register(subparsers)``."""
