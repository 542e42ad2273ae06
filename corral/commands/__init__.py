"""CLI command groups. Every public module here has `register(subparsers)`."""
