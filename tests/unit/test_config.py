"""Config files: shipped defaults match the schema; errors name file, line, key."""

from pathlib import Path

import pytest

from bearer.settings import BEARER_OPTIONS, load_bearer_config
from bearer.settings import HEADER as BEARER_HEADER
from softswitch.config import ConfigError, render_defaults
from softswitch.settings import CONTROL_OPTIONS, HEADER, load_control_config

ETC = Path(__file__).resolve().parents[2] / "etc" / "softswitch"


def test_shipped_softswitch_conf_documents_every_option_with_its_default():
    assert (ETC / "softswitch.conf").read_text() == render_defaults(CONTROL_OPTIONS, HEADER)


def test_shipped_bearer_conf_documents_every_option_with_its_default():
    assert (ETC / "bearer.conf").read_text() == render_defaults(BEARER_OPTIONS, BEARER_HEADER)


def test_shipped_files_load_to_the_defaults():
    cfg = load_control_config(ETC / "softswitch.conf", required=True)
    assert cfg.sip.port == 5060
    assert cfg.sip.listen == ["127.0.0.1"]
    assert cfg.bearers.endpoints[0] == ("unix", "/run/softswitch/bearer-0.sock", 0)


def test_missing_file_gives_defaults_unless_required(tmp_path):
    assert load_control_config(tmp_path / "none.conf").calls.no_answer_timeout == 60
    with pytest.raises(ConfigError, match=r"none.conf: no such file"):
        load_control_config(tmp_path / "none.conf", required=True)


def test_bad_value_names_file_line_and_key(tmp_path):
    conf = tmp_path / "softswitch.conf"
    conf.write_text("[sip]\nlisten = 127.0.0.1\n\nport = fivethousand\n")
    with pytest.raises(ConfigError) as err:
        load_control_config(conf)
    assert str(err.value) == f"{conf}:4: [sip] port: not an integer: 'fivethousand'"


def test_unknown_key_and_section_are_errors_not_silent_defaults(tmp_path):
    conf = tmp_path / "softswitch.conf"
    conf.write_text("[sip]\nprot = 5060\n")
    with pytest.raises(ConfigError, match=r":2: \[sip\] prot: unknown key"):
        load_control_config(conf)
    conf.write_text("# c\n[sipp]\nport = 5060\n")
    with pytest.raises(ConfigError, match=r":2: unknown section \[sipp\]"):
        load_control_config(conf)


def test_syntax_error_is_one_line(tmp_path):
    conf = tmp_path / "softswitch.conf"
    conf.write_text("port = 5060\n")
    with pytest.raises(ConfigError) as err:
        load_control_config(conf)
    assert "\n" not in str(err.value) and str(conf) in str(err.value)


def test_bad_endpoint_is_explained(tmp_path):
    conf = tmp_path / "softswitch.conf"
    conf.write_text("[bearers]\nendpoints = tcp:1.2.3.4:5\n")
    with pytest.raises(ConfigError, match=r"not unix:/path or udp:host:port"):
        load_control_config(conf)


def test_bearer_instances_get_their_own_socket_and_port_slice(tmp_path):
    conf = tmp_path / "bearer.conf"
    conf.write_text("[bearer]\ncontrol = udp:[2001:db8::2]:7700\n")
    one = load_bearer_config(conf, 1).bearer
    assert one.control == ("udp", "2001:db8::2", 7701)
    assert (one.port_first, one.port_last) == (34000, 37999)
    zero = load_bearer_config(ETC / "bearer.conf", 0).bearer
    assert zero.control == ("unix", "/run/softswitch/bearer-0.sock", 0)
    assert zero.advertised_address == "127.0.0.1"
