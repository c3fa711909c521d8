"""The console scripts (`beltcrack-train`, `beltcrack-evaluate`, ...; see pyproject.toml) and what they share:
the `--config` flag that takes a packaged name or a path (`config_flag`) and quiet logging (`logs`)."""
