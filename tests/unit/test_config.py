"""Config files (TOML): shipped defaults match the schema; errors name file, line, key, type."""

import os
from pathlib import Path

import pytest

from softswitch.daemon.settings import CONTROL_OPTIONS, HEADER, load_control_config
from softswitch.daemonkit.bearerconf import BEARER_OPTIONS, load_bearer_config
from softswitch.daemonkit.bearerconf import HEADER as BEARER_HEADER
from softswitch.daemonkit.config import ConfigError, _key_lines, dumps, render_defaults

ETC = Path(__file__).resolve().parents[2] / "etc" / "softswitch"


def error(tmp_path: Path, text: str, name: str = "softswitch.conf") -> str:
    """The one-line error loading `text` gives, with the file's path replaced by FILE."""
    conf = tmp_path / name
    conf.write_text(text)
    with pytest.raises(ConfigError) as err:
        if name == "bearer.conf":
            load_bearer_config(conf, 0)
        else:
            load_control_config(conf)
    message = str(err.value)
    assert "\n" not in message
    return message.replace(str(conf), "FILE")


def test_shipped_softswitch_conf_documents_every_option_with_its_default():
    assert (ETC / "softswitch.conf").read_text() == render_defaults(CONTROL_OPTIONS, HEADER)


def test_shipped_bearer_conf_documents_every_option_with_its_default():
    assert (ETC / "bearer.conf").read_text() == render_defaults(BEARER_OPTIONS, BEARER_HEADER)


def test_shipped_files_load_to_the_defaults():
    cfg = load_control_config(ETC / "softswitch.conf", required=True)
    assert cfg.sip.port == 5060
    assert cfg.sip.listen == ["127.0.0.1"]
    assert cfg.sip.transports == ["udp", "tcp"]
    assert cfg.sip.domain is None and cfg.log.file is None
    assert cfg.sip.digest_algorithms == ["MD5"]  # every phone tested accepts it
    assert cfg.log.sip_trace is False
    assert cfg.database.sync_interval == 2.0 and isinstance(cfg.database.sync_interval, float)
    assert cfg.bearers.endpoints == [  # "auto": one bearer per core, at most two
        ("unix", f"/run/softswitch/bearer-{n}.sock", 0) for n in range(min(os.cpu_count(), 2))
    ]
    assert cfg.bearers.local == ("unix", "/run/softswitch/control.sock", 0)
    assert load_bearer_config(ETC / "bearer.conf", 0).bearer.instances == "auto"


ZERO, ONE = "unix:/run/softswitch/bearer-0.sock", "unix:/run/softswitch/bearer-1.sock"


@pytest.mark.parametrize(
    ("bearer_conf", "cores", "expected"),
    [
        (None, 1, [ZERO]),  # the one-core host: no bearer-1
        (None, 8, [ZERO, ONE]),
        ('[bearer]\ninstances = "none"\n', 4, []),
        (
            '[bearer]\ninstances = [0, 3]\ncontrol = "unix:/run/b-%i.sock"\n',
            1,
            ["unix:/run/b-0.sock", "unix:/run/b-3.sock"],
        ),
        (
            '[bearer]\ncontrol = "udp:10.0.0.2:7700"\n',
            2,
            ["udp:10.0.0.2:7700", "udp:10.0.0.2:7701"],
        ),
    ],
)
def test_auto_bearer_endpoints_are_the_bearers_this_host_runs(
    tmp_path, monkeypatch, bearer_conf, cores, expected
):
    """softswitch-generator starts bearers by bearer.conf; control must look
    for exactly those, or a one-core host shows a bearer-1 down forever."""
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    if bearer_conf is not None:
        (tmp_path / "bearer.conf").write_text(bearer_conf)
    (tmp_path / "softswitch.conf").write_text('[bearers]\nendpoints = "auto"\n')
    cfg = load_control_config(tmp_path / "softswitch.conf")
    shown = [f"{k}:{a}" if k == "unix" else f"{k}:{a}:{p}" for k, a, p in cfg.bearers.endpoints]
    assert shown == expected


def test_auto_bearer_endpoints_report_a_bad_bearer_conf_by_name(tmp_path):
    (tmp_path / "bearer.conf").write_text('[bearer]\ninstances = "some"\n')
    with pytest.raises(ConfigError, match=r"bearer.conf:2: \[bearer\] instances"):
        load_control_config(tmp_path / "softswitch.conf")


def test_missing_file_gives_defaults_unless_required(tmp_path):
    assert load_control_config(tmp_path / "none.conf").calls.no_answer_timeout == 60
    with pytest.raises(ConfigError, match=r"none.conf: no such file"):
        load_control_config(tmp_path / "none.conf", required=True)


def test_values_of_every_type_are_read(tmp_path):
    conf = tmp_path / "softswitch.conf"
    conf.write_text(
        "[sip]\n"
        'listen = ["10.0.0.1", "2001:db8::1"]  # both families\n'
        "port = 5070\n"
        "t1 = 1  # an integer is a number too\n"
        'digest_algorithms = ["md5", "sha-256"]\n'
        'domain = "example.com"\n'
        "[bearers]\n"
        "endpoints = [\n"
        '    "udp:10.0.0.2:7700",\n'
        '    "udp:[2001:db8::2]:7701",  # trailing comma\n'
        "]\n"
        "[log]\n"
        "sip_trace = true\n"
        'level = "DEBUG"\n'
    )
    cfg = load_control_config(conf)
    assert cfg.sip.listen == ["10.0.0.1", "2001:db8::1"]
    assert (cfg.sip.port, cfg.sip.t1, cfg.sip.domain) == (5070, 1.0, "example.com")
    assert cfg.sip.digest_algorithms == ["MD5", "SHA-256"]
    assert cfg.bearers.endpoints == [("udp", "10.0.0.2", 7700), ("udp", "2001:db8::2", 7701)]
    assert (cfg.log.sip_trace, cfg.log.level) == (True, "debug")


def test_bad_value_names_file_line_and_key(tmp_path):
    assert (
        error(tmp_path, '[sip]\nlisten = ["127.0.0.1"]\n\nport = "fivethousand"\n')
        == 'FILE:4: [sip] port: expected an integer, got a string ("fivethousand")'
    )
    assert (
        error(tmp_path, "[sip]\nport = 99999\n") == "FILE:2: [sip] port: 99999 is outside 1..65535"
    )


def test_wrong_types_say_what_was_expected_and_what_was_found(tmp_path):
    assert (
        error(tmp_path, "[sip]\nport = 5060.0\n")
        == "FILE:2: [sip] port: expected an integer, got a float (5060.0)"
    )
    assert (
        error(tmp_path, "[sip]\nuser_agent = 5\n")
        == "FILE:2: [sip] user_agent: expected a string, got an integer (5)"
    )
    assert (
        error(tmp_path, '[sip]\nlisten = "127.0.0.1"\n')
        == 'FILE:2: [sip] listen: expected an array of strings, got a string ("127.0.0.1")'
    )
    assert (
        error(tmp_path, '[sip]\n\nt1 = "0.5"\n')
        == 'FILE:3: [sip] t1: expected a number, got a string ("0.5")'
    )
    assert (
        error(tmp_path, '[log]\nsip_trace = "yes"\n')
        == 'FILE:2: [log] sip_trace: expected a boolean, got a string ("yes")'
    )
    assert (
        error(tmp_path, "[database]\nurl = [1, 2]\n")
        == "FILE:2: [database] url: expected a string, got an array ([1, 2])"
    )
    assert (
        error(tmp_path, "[bearer]\ninstances = 2\n", "bearer.conf")
        == "FILE:2: [bearer] instances: expected a string or an array of integers,"
        " got an integer (2)"
    )


def test_a_bad_array_element_is_named_by_its_index(tmp_path):
    assert (
        error(tmp_path, '[sip]\ntransports = ["udp", 5]\n')
        == "FILE:2: [sip] transports[1]: expected a string, got an integer (5)"
    )
    assert (
        error(tmp_path, '[sip]\nlisten = ["127.0.0.1", "10.0.0"]\n')
        == 'FILE:2: [sip] listen[1]: not an IP address: "10.0.0"'
    )
    assert (
        error(tmp_path, '[sip]\ntransports = ["udp", "sctp"]\n')
        == 'FILE:2: [sip] transports[1]: "sctp" is not one of "udp", "tcp"'
    )
    assert (
        error(tmp_path, '[bearer]\ninstances = [0, "1"]\n', "bearer.conf")
        == 'FILE:2: [bearer] instances[1]: expected an integer, got a string ("1")'
    )
    assert (
        error(tmp_path, '[bearer]\ninstances = "first"\n', "bearer.conf")
        == 'FILE:2: [bearer] instances: "first" is not one of "auto", "none"'
    )


def test_unknown_key_and_section_are_errors_not_silent_defaults(tmp_path):
    assert error(tmp_path, "[sip]\nprot = 5060\n") == "FILE:2: [sip] prot: unknown key"
    assert error(tmp_path, "# c\n[sipp]\nport = 5060\n") == "FILE:2: unknown section [sipp]"
    assert error(tmp_path, "port = 5060\n") == "FILE:1: port: key outside any [section]"
    assert (
        error(tmp_path, "[sip]\nport = 5060\n[log]\nlevel = 'info'\nsip.prot = 1\n")
        == "FILE:5: [log] sip: unknown key"
    )


def test_syntax_errors_keep_tomllibs_message_with_line_and_column(tmp_path):
    # a duplicate key
    assert (
        error(tmp_path, "[sip]\nport = 5060\nport = 5061\n")
        == "FILE:3: Cannot overwrite a value (column 12)"
    )
    assert (
        error(tmp_path, "[sip]\n[log]\n[sip]\n")
        == "FILE:3: Cannot declare ('sip',) twice (column 5)"
    )
    # INI habits: unquoted strings and lists
    assert error(tmp_path, "[sip]\ndomain = example.com\n") == "FILE:2: Invalid value (column 10)"
    assert (
        error(tmp_path, "[sip]\n\nlisten = 127.0.0.1\n")
        == "FILE:3: Expected newline or end of document after a statement (column 15)"
    )
    assert (
        error(tmp_path, "[sip\n")
        == "FILE:1: Expected ']' at the end of a table declaration (column 5)"
    )
    # the end of the file, where tomllib gives no column
    assert (
        error(tmp_path, '[sip]\nlisten = ["127.0.0.1"\n')
        == "FILE:2: Unclosed array (at end of document)"
    )


def test_bad_endpoint_is_explained(tmp_path):
    assert (
        error(tmp_path, '[bearers]\nendpoints = ["tcp:1.2.3.4:5"]\n')
        == 'FILE:2: [bearers] endpoints[0]: not unix:/path or udp:host:port: "tcp:1.2.3.4:5"'
    )


def test_overrides_win_and_are_checked(tmp_path):
    cfg = load_control_config(
        tmp_path / "none.conf", overrides={("sip", "port"): 5070, ("calls", "codecs"): ["PCMA"]}
    )
    assert (cfg.sip.port, cfg.calls.codecs) == (5070, ["PCMA"])
    with pytest.raises(ConfigError, match=r"\(override\): \[sip\] port: expected an integer"):
        load_control_config(tmp_path / "none.conf", overrides={("sip", "port"): "5070"})


def test_key_lines_skip_comments_strings_and_multiline_arrays():
    text = (
        "# port = 1\n"  # 1
        '[ sip ]  # the "sip" table\n'  # 2
        "listen = [\n"  # 3
        '  "a",  # port = 2\n'  # 4
        '  "port = 3",\n'  # 5
        "]\n"  # 6
        'user_agent = """\n'  # 7
        "port = 4\n"  # 8
        '"""\n'  # 9
        "port = 5\n"  # 10
        "[log]\n"  # 11
        '"level" = "x"\n'  # 12
        "sip.t1 = 1\n"  # 13
    )
    lines = _key_lines(text)
    assert lines[("sip",)] == 2
    assert lines[("sip", "listen")] == 3
    assert lines[("sip", "user_agent")] == 7
    assert lines[("sip", "port")] == 10
    assert lines[("log", "level")] == 12
    assert lines[("log", "sip", "t1")] == 13


def test_dumps_writes_what_load_reads(tmp_path):
    conf = tmp_path / "softswitch.conf"
    conf.write_text(
        dumps(
            {
                "sip": {"listen": ["127.0.0.1"], "port": 5070, "user_agent": 'a "quoted"\\ua'},
                "database": {"sync_interval": 0.5},
                "bearers": {"endpoints": ["unix:/run/x-0.sock"]},
                "log": {"sip_trace": True, "file": ""},
            },
            header="# generated",
        )
    )
    cfg = load_control_config(conf, required=True)
    assert (cfg.sip.port, cfg.sip.user_agent) == (5070, 'a "quoted"\\ua')
    assert (cfg.database.sync_interval, cfg.log.sip_trace, cfg.log.file) == (0.5, True, None)
    assert cfg.bearers.endpoints == [("unix", "/run/x-0.sock", 0)]


def test_bearer_instances_get_their_own_socket_and_port_slice(tmp_path):
    conf = tmp_path / "bearer.conf"
    conf.write_text('[bearer]\ncontrol = "udp:[2001:db8::2]:7700"\ninstances = [0, 1]\n')
    one = load_bearer_config(conf, 1).bearer
    assert one.control == ("udp", "2001:db8::2", 7701)
    assert one.instances == [0, 1]
    assert (one.port_first, one.port_last) == (34000, 37999)
    zero = load_bearer_config(ETC / "bearer.conf", 0).bearer
    assert zero.control == ("unix", "/run/softswitch/bearer-0.sock", 0)
    assert zero.advertised_address == "127.0.0.1"
    conf.write_text('[bearer]\ninstances = "None"\n')
    assert load_bearer_config(conf, 0).bearer.instances == "none"


def test_auto_means_as_many_bearers_for_control_as_for_the_generator():
    from softswitch.daemon.settings import MAX_AUTO_INSTANCES

    generator = Path(__file__).parents[2] / "systemd" / "softswitch-generator"
    assert f"\nmax_auto={MAX_AUTO_INSTANCES}\n" in generator.read_text()


@pytest.mark.parametrize(
    ("url", "spool"),
    [
        ("sqlite:////var/lib/softswitch/softswitch.db", "/var/lib/softswitch/spool"),
        ("sqlite:////home/me/switch/var/softswitch.db?timeout=5", "/home/me/switch/var/spool"),
        ("sqlite:///var/softswitch.db", "var/spool"),  # relative, as an old `make run` wrote
        ("sqlite://", "/var/lib/softswitch/spool"),
        ("mysql+pymysql://switch:pw@db.example.com/switch", "/var/lib/softswitch/spool"),
    ],
)
def test_auto_spool_dir_is_beside_an_sqlite_file_else_the_state_directory(tmp_path, url, spool):
    (tmp_path / "softswitch.conf").write_text(f'[database]\nurl = "{url}"\n')
    assert load_control_config(tmp_path / "softswitch.conf").database.spool_dir == spool


def test_an_empty_spool_dir_turns_the_journal_off(tmp_path):
    (tmp_path / "softswitch.conf").write_text('[database]\nspool_dir = ""\n')
    assert load_control_config(tmp_path / "softswitch.conf").database.spool_dir is None
