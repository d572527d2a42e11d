"""The application: the command line, the main job's pipeline and its configuration, the saved-model commands
and the cost report. Nothing below imports from here."""
