"""Built-in behaviour, written as ordinary plugins and registered by ``get_plugin_manager``."""
