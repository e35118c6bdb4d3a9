"""Integrations of rarekit's losses with other libraries; each submodule imports its library lazily."""
