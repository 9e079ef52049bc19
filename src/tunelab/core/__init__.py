"""Pure-Python core: config schema, registries, events. Never imports torch."""
