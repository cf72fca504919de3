"""Tests of proxy/wire/auth.py: both sides driving each other, libpq against ClientAuth, BackendAuth against PostgreSQL."""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scramp import ScramClient

from proxy.wire import protocol as p
from proxy.wire.auth import AuthFailed, BackendAuth, ClientAuth, Credential, parse_scram_verifier, scram_verifier
from tests.pgcluster import login
from tests.unit.authserver import AuthServer
from tests.unit.conftest import ROLES

PASSWORD = "s3cret pässword"
VERIFIER = scram_verifier(PASSWORD)


def frames(data: bytes) -> list[bytes]:
    framer = p.Framer()
    framer.feed(data)
    msgs = [m for _, m in framer.messages()]
    assert framer.pending() == 0, "a message was cut short"
    return msgs


def exchange(server: ClientAuth, client: BackendAuth, tamper=lambda msg: msg) -> list[bytes]:
    """Drive the whole exchange through bytes; return every message the server sent."""
    sent = frames(server.start())
    to_client = sent
    while not client.done:
        reply = b"".join(client.receive(tamper(m)) for m in to_client)
        if client.done:
            break
        to_client = frames(b"".join(server.receive(m) for m in frames(reply)))
        sent += to_client
    return sent


CREDENTIALS = {
    "md5/password": ("md5", Credential(password=PASSWORD)),
    "scram/password": ("scram-sha-256", Credential(password=PASSWORD)),
    "scram/verifier": ("scram-sha-256", Credential(scram_verifier=VERIFIER)),
}


@pytest.mark.parametrize("method, credential", CREDENTIALS.values(), ids=CREDENTIALS.keys())
def test_right_password_authenticates_both_sides(method, credential):
    server, client = ClientAuth(method, "alice", credential), BackendAuth("alice", PASSWORD)
    sent = exchange(server, client)
    assert server.done and client.done
    assert sent[-1] == p.AUTH_OK
    codes = [int.from_bytes(m[5:9], "big") for m in sent]
    assert codes == ([5, 0] if method == "md5" else [10, 11, 12, 0])


@pytest.mark.parametrize("method, credential", CREDENTIALS.values(), ids=CREDENTIALS.keys())
def test_wrong_password_is_28P01(method, credential):
    server = ClientAuth(method, "alice", credential)
    with pytest.raises(AuthFailed) as err:
        exchange(server, BackendAuth("alice", PASSWORD + "x"))
    assert (err.value.sqlstate, str(err.value)) == ("28P01", 'password authentication failed for user "alice"')
    assert not server.done


def test_md5_answer_is_bound_to_the_user_name():
    server = ClientAuth("md5", "alice", Credential(password=PASSWORD))
    with pytest.raises(AuthFailed, match="28P01|password authentication failed"):
        exchange(server, BackendAuth("bob", PASSWORD))


def test_md5_salt_is_fresh_for_every_exchange():
    salts = {ClientAuth("md5", "alice", Credential(password="x")).start()[9:] for _ in range(20)}
    assert len(salts) == 20


def test_trust_is_done_at_once_and_refuses_password_messages():
    server = ClientAuth("trust", "anyone", None)
    assert server.start() == p.AUTH_OK and server.done
    with pytest.raises(AuthFailed) as err:
        server.receive(p.password_message(p.cstr("x")))
    assert err.value.sqlstate == "08P01"


@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
def test_unknown_user_is_28000_naming_auth_users(method):
    with pytest.raises(AuthFailed) as err:
        ClientAuth(method, "mallory", None).start()
    assert err.value.sqlstate == "28000"
    assert err.value.message == 'role "mallory" is not known to pgwarden'
    assert "auth.users" in err.value.hint


def test_md5_with_only_a_verifier_says_to_use_scram_or_a_password():
    with pytest.raises(AuthFailed) as err:
        ClientAuth("md5", "alice", Credential(scram_verifier=VERIFIER)).start()
    assert err.value.sqlstate == "28000"
    assert "scram-sha-256" in err.value.hint and "password" in err.value.hint


@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
def test_a_user_without_any_secret_is_refused_naming_password_env(method):
    with pytest.raises(AuthFailed) as err:
        ClientAuth(method, "alice", Credential()).start()
    assert err.value.sqlstate == "28000" and "password_env" in err.value.hint


def test_a_malformed_verifier_is_refused_at_start():
    with pytest.raises(AuthFailed) as err:
        ClientAuth("scram-sha-256", "alice", Credential(scram_verifier="SCRAM-SHA-256$x")).start()
    assert err.value.sqlstate == "28000" and "pgwarden passwd" in err.value.hint


def test_plain_password_secrets_are_reused_per_user_but_not_shared_between_users():
    def server_first(user: str) -> str:
        server = ClientAuth("scram-sha-256", user, Credential(password=PASSWORD))
        client = BackendAuth(user, PASSWORD)
        first = client.receive(server.start())
        return server.receive(first)[9:].decode()

    def salt(text: str) -> str:
        return dict(kv.split("=", 1) for kv in text.split(","))["s"]

    assert salt(server_first("alice")) == salt(server_first("alice"))
    assert salt(server_first("alice")) != salt(server_first("bob"))


MALFORMED = {
    "not a p message": p.message(b"Q", p.cstr("md5abc")),
    "length lies": b"p\x00\x00\x00\x40md5\x00",
    "no NUL": p.password_message(b"md5abc"),
    "trailing bytes": p.password_message(p.cstr("md5abc") + b"x"),
}


@pytest.mark.parametrize("msg", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_md5_password_message_is_08P01(msg):
    server = ClientAuth("md5", "alice", Credential(password=PASSWORD))
    server.start()
    with pytest.raises(AuthFailed) as err:
        server.receive(msg)
    assert err.value.sqlstate == "08P01"


SASL_MALFORMED = {
    "other mechanism": p.password_message(p.cstr("SCRAM-SHA-1") + b"\x00\x00\x00\x03n,,"),
    "PLUS not offered": p.password_message(p.cstr("SCRAM-SHA-256-PLUS") + b"\x00\x00\x00\x03n,,"),
    "length lies": p.password_message(p.cstr("SCRAM-SHA-256") + b"\x00\x00\x00\x0an,,n=,r=x"),
    "truncated": p.password_message(p.cstr("SCRAM-SHA-256") + b"\x00\x00"),
    "not SCRAM text": p.password_message(p.cstr("SCRAM-SHA-256") + b"\x00\x00\x00\x04oops"),
    "not UTF-8": p.password_message(p.cstr("SCRAM-SHA-256") + b"\x00\x00\x00\x02\xff\xfe"),
}


@pytest.mark.parametrize("msg", SASL_MALFORMED.values(), ids=SASL_MALFORMED.keys())
def test_malformed_sasl_initial_response_is_08P01(msg):
    server = ClientAuth("scram-sha-256", "alice", Credential(password=PASSWORD))
    server.start()
    with pytest.raises(AuthFailed) as err:
        server.receive(msg)
    assert err.value.sqlstate == "08P01"


def scram_server() -> ClientAuth:
    return ClientAuth("scram-sha-256", "alice", Credential(password=PASSWORD))


def sasl_initial(first: str) -> bytes:
    data = first.encode()
    return p.password_message(p.cstr("SCRAM-SHA-256") + len(data).to_bytes(4, "big") + data)


@pytest.mark.parametrize("name", ["", "*", "alice", "a=3Db", "\u0007bell"])
def test_the_scram_user_name_is_ignored_as_postgresql_does(name):
    """libpq sends an empty name, pgjdbc and node-postgres '*'; the startup packet's user counts."""
    client = ScramClient(["SCRAM-SHA-256"], "x", PASSWORD)
    client.get_client_first()  # then make it sign a message that carries `name` instead
    client.client_first_bare = client.client_first_bare.replace("n=x,", f"n={name},", 1)
    server = scram_server()
    server.start()
    server_first = frames(server.receive(sasl_initial("n,," + client.client_first_bare)))[0]
    client.set_server_first(server_first[9:].decode())
    final, ok = frames(server.receive(p.password_message(client.get_client_final().encode())))
    client.set_server_final(final[9:].decode())  # raises if the server signed something else
    assert ok == p.AUTH_OK and server.done


def test_forged_nonce_in_client_final_is_refused():
    server, client = scram_server(), BackendAuth("alice", PASSWORD)
    final = client.receive(server.receive(client.receive(server.start())))[5:].decode()
    forged = final.replace("r=", "r=X", 1)
    with pytest.raises(AuthFailed) as err:
        server.receive(p.password_message(forged.encode()))
    assert err.value.sqlstate == "08P01" and not server.done


def test_a_replayed_client_final_does_not_authenticate_a_new_exchange():
    server, client = scram_server(), BackendAuth("alice", PASSWORD)
    first = client.receive(server.start())
    final = client.receive(server.receive(first))
    assert server.receive(final).endswith(p.AUTH_OK)
    replay = scram_server()  # an eavesdropper replays both messages; the server nonce is new
    replay.start()
    replay.receive(first)
    with pytest.raises(AuthFailed):
        replay.receive(final)
    assert not replay.done


# --- BackendAuth on its own -----------------------------------------------------------------


@pytest.mark.parametrize("request_msg", [p.auth_request(3), p.auth_request(5, b"salt"), p.auth_sasl(["SCRAM-SHA-256"])])
def test_backend_asking_for_a_password_when_none_is_configured(request_msg):
    with pytest.raises(AuthFailed) as err:
        BackendAuth("app", None).receive(request_msg)
    assert err.value.sqlstate == "28P01" and "backend_auth.password_env" in err.value.hint


@pytest.mark.parametrize("code, name", [(7, "GSSAPI"), (9, "SSPI"), (2, "Kerberos V5"), (42, "42")])
def test_unsupported_backend_methods_are_28000(code, name):
    with pytest.raises(AuthFailed) as err:
        BackendAuth("app", "pw").receive(p.auth_request(code))
    assert err.value.sqlstate == "28000" and name in err.value.message


def test_backend_offering_only_scram_plus_is_refused():
    with pytest.raises(AuthFailed) as err:
        BackendAuth("app", "pw").receive(p.auth_sasl(["SCRAM-SHA-256-PLUS"]))
    assert err.value.sqlstate == "28000"


def test_backend_md5_answer_matches_postgresql_formula():
    answer = BackendAuth("app", "pw").receive(p.auth_request(5, b"\x01\x02\x03\x04"))
    inner = hashlib.md5(b"pwapp").hexdigest().encode()
    assert answer == p.password_message(p.cstr("md5" + hashlib.md5(inner + b"\x01\x02\x03\x04").hexdigest()))


def test_cleartext_answer_is_the_password():
    assert BackendAuth("app", "pw").receive(p.auth_request(3)) == p.password_message(b"pw\x00")


def test_a_server_signature_that_does_not_verify_is_28P01():
    def tamper(msg: bytes) -> bytes:  # flip one byte of the signature in SASLFinal
        if msg[5:9] == b"\x00\x00\x00\x0c":
            return msg[:-3] + bytes([msg[-3] ^ 1]) + msg[-2:]
        return msg

    server = ClientAuth("scram-sha-256", "alice", Credential(password=PASSWORD))
    with pytest.raises(AuthFailed) as err:
        exchange(server, BackendAuth("alice", PASSWORD), tamper)
    assert err.value.sqlstate == "28P01"


def test_sasl_continue_before_sasl_is_08P01():
    with pytest.raises(AuthFailed) as err:
        BackendAuth("app", "pw").receive(p.auth_request(11, b"r=x,s=y,i=4096"))
    assert err.value.sqlstate == "08P01"


def test_scram_verifier_format():
    salt, stored, server, iterations = parse_scram_verifier(scram_verifier("pw", iterations=5000))
    assert (len(salt), len(stored), len(server), iterations) == (16, 32, 32, 5000)
    with pytest.raises(ValueError):
        parse_scram_verifier("SCRAM-SHA-256$10:c2FsdHNhbHRzYWx0$AAAA:AAAA")


# --- libpq (psycopg) against ClientAuth -------------------------------------------------------


def psycopg_connect(port: int, user: str, password: str) -> None:
    psycopg.connect(
        host="127.0.0.1",
        port=port,
        user=user,
        password=password,
        dbname="db",
        sslmode="disable",
        gssencmode="disable",
        connect_timeout=5,
    ).close()


@pytest.mark.parametrize("method, credential", CREDENTIALS.values(), ids=CREDENTIALS.keys())
def test_libpq_authenticates_against_client_auth(method, credential):
    server = AuthServer(method, {"alice": credential})
    try:
        psycopg_connect(server.port, "alice", PASSWORD)  # libpq checks our SCRAM signature too
        with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "alice"'):
            psycopg_connect(server.port, "alice", "wrong")
        with pytest.raises(psycopg.OperationalError, match='role "bob" is not known to pgwarden'):
            psycopg_connect(server.port, "bob", PASSWORD)
    finally:
        server.close()
    assert server.done == [True, False, False]


# --- BackendAuth against a real PostgreSQL ---------------------------------------------------


@pytest.mark.parametrize("role, code", [("md5_user", 5), ("scram_user", 10), ("clear_user", 3), ("unicode_user", 10)])
def test_backend_auth_logs_into_postgresql(pg_cluster, role, code):
    password = ROLES[role][0]
    result = login(pg_cluster.host, pg_cluster.port, role, password)
    assert result.ok, result.error
    assert result.auth_requests[0] == code and result.auth_requests[-1] == 0


@pytest.mark.parametrize("role", ["md5_user", "scram_user", "clear_user"])
def test_postgresql_refuses_backend_auth_with_a_wrong_password(pg_cluster, role):
    result = login(pg_cluster.host, pg_cluster.port, role, "wrong")
    assert result.error["sqlstate"] == "28P01"
    assert result.error["message"] == f'password authentication failed for user "{role}"'


def test_no_backend_password_is_refused_before_postgresql_sees_one(pg_cluster):
    with pytest.raises(AuthFailed) as err:
        login(pg_cluster.host, pg_cluster.port, "scram_user", None)
    assert err.value.sqlstate == "28P01"


def test_scram_password_is_saslprepped_as_postgresql_does(pg_cluster):
    """PostgreSQL stored SASLprep("pässwörd<NBSP>ü"), which equals SASLprep("pässwörd ü")."""
    assert login(pg_cluster.host, pg_cluster.port, "unicode_user", "pässwörd ü").ok
    assert not login(pg_cluster.host, pg_cluster.port, "unicode_user", "passwörd ü").ok


def test_postgresql_accepts_a_verifier_made_by_scram_verifier(pg_cluster):
    pg_cluster.psql(f"CREATE ROLE our_verifier LOGIN PASSWORD '{scram_verifier('ours')}'")
    assert login(pg_cluster.host, pg_cluster.port, "our_verifier", "ours").ok
    assert login(pg_cluster.host, pg_cluster.port, "our_verifier", "other").error["sqlstate"] == "28P01"


def test_client_auth_accepts_a_verifier_made_by_postgresql(pg_cluster):
    stored = pg_cluster.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_user'")
    server = ClientAuth("scram-sha-256", "scram_user", Credential(scram_verifier=stored))
    exchange(server, BackendAuth("scram_user", ROLES["scram_user"][0]))
    assert server.done
    with pytest.raises(AuthFailed):
        exchange(
            ClientAuth("scram-sha-256", "scram_user", Credential(scram_verifier=stored)),
            BackendAuth("scram_user", "wrong"),
        )


# --- fuzzing: whatever the peer sends, only AuthFailed comes out ---------------------------------


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["md5", "scram-sha-256"]), st.lists(st.binary(max_size=80), max_size=3))
def test_client_auth_raises_only_auth_failed_on_arbitrary_messages(method, payloads):
    server = ClientAuth(method, "alice", Credential(password=PASSWORD))
    server.start()
    try:
        for payload in payloads:
            server.receive(p.password_message(payload))
    except AuthFailed:
        pass


SASL_PREFIX = p.cstr("SCRAM-SHA-256")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.text(max_size=120))
def test_client_auth_raises_only_auth_failed_on_arbitrary_scram_text(first, final):
    server = ClientAuth("scram-sha-256", "alice", Credential(password=PASSWORD))
    server.start()
    data = ("n,,n=," + first).encode("utf-8", "surrogatepass")
    try:
        server.receive(p.password_message(SASL_PREFIX + len(data).to_bytes(4, "big") + data))
        server.receive(p.password_message(final.encode("utf-8", "surrogatepass")))
    except AuthFailed:
        pass
    assert not server.done


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 3, 5, 10, 11, 12, 7]), st.binary(max_size=60)), max_size=4))
def test_backend_auth_raises_only_auth_failed_on_arbitrary_requests(requests):
    client = BackendAuth("app", "pw")
    try:
        for code, data in requests:
            client.receive(p.auth_request(code, data))
    except AuthFailed:
        pass
