"""Database access: connection resolution, the embedded server, migrations, codecs."""
