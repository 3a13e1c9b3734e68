"""The web dashboard: lists runs, starts and stops the trainer, shows metrics and takes the human
feedback. It talks to the trainer only through the run directory (``trainer.protocol``)."""
