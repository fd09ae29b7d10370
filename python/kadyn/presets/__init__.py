"""Training presets (TOML), read with importlib.resources by `kadyn.config`."""
