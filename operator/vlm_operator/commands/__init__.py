"""One module per `vlm-operator` subcommand: ``add_arguments`` and ``run``."""
