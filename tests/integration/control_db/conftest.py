"""A throwaway MariaDB server for this suite (tests/mariadb.py)."""

from tests.mariadb import mariadb_server, mariadb_url, private_mariadb  # noqa: F401
