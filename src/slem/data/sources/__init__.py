"""One module per data source; each returns a :class:`slem.data.Dataset`."""
