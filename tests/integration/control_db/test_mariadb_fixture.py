"""The throwaway-MariaDB fixture fails loudly, naming the package, when mariadbd is missing."""

from __future__ import annotations

import pymysql
import pytest

from tests import mariadb


def test_missing_mariadbd_fails_with_the_package_to_install(monkeypatch):
    monkeypatch.setattr(mariadb, "find_binary", lambda name: None)
    monkeypatch.setattr(mariadb, "_template", None)
    with pytest.raises(pytest.fail.Exception) as failed:
        mariadb.make_template()
    assert "apt-get install -y mariadb-server" in str(failed.value)


def test_server_restarts_on_the_same_datadir_with_its_data(private_mariadb):
    private_mariadb.sql("CREATE TABLE softswitch.t (x INT) ENGINE=InnoDB")
    private_mariadb.sql("INSERT INTO softswitch.t VALUES (42)")
    private_mariadb.stop()
    assert not private_mariadb.running
    private_mariadb.start()
    conn = pymysql.connect(unix_socket=str(private_mariadb.socket), user="root")
    with conn.cursor() as cur:
        cur.execute("SELECT x FROM softswitch.t")
        assert cur.fetchall() == ((42,),)
    conn.close()
