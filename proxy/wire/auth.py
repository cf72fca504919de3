"""Authentication, sans-IO: clients to pgwarden (trust, md5, SCRAM-SHA-256) and pgwarden to backends."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import struct
from dataclasses import dataclass
from functools import lru_cache
from hmac import compare_digest

from scramp import ScramClient, ScramException, ScramMechanism
from scramp.core import ScramServer
from scramp.utils import ServerError

from proxy.wire.protocol import AUTH_OK, ProtocolError, auth_request, auth_sasl, cstr, password_message, read_cstr

SCRAM = "SCRAM-SHA-256"
METHODS = ("trust", "md5", "scram-sha-256")
MIN_ITERATIONS, MAX_ITERATIONS = 4096, 10_000_000  # what scramp accepts
_I32 = struct.Struct("!i")
_VERIFIER = re.compile(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)")
# Authentication request codes pgwarden cannot answer as a client of a backend.
_UNSUPPORTED = {2: "Kerberos V5", 6: "SCM credentials", 7: "GSSAPI", 8: "GSSAPI", 9: "SSPI"}

ScramSecret = tuple[bytes, bytes, bytes, int]  # salt, StoredKey, ServerKey, iterations (scramp's order)


class AuthFailed(Exception):
    """Authentication refused; the session reports it to the client as a FATAL ErrorResponse."""

    def __init__(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Credential:
    """What pgwarden knows of a client login: a plain password, or a stored SCRAM verifier."""

    password: str | None = None  # from config `password`, or `password_env` resolved
    scram_verifier: str | None = None  # "SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>"


# --- secrets ------------------------------------------------------------------------------------


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """A stored SCRAM-SHA-256 verifier in PostgreSQL's format (what `pg_authid.rolpassword` holds)."""
    salt, stored_key, server_key, i = ScramMechanism(SCRAM).make_auth_info(
        password, iteration_count=iterations, salt=secrets.token_bytes(16)
    )
    b64 = base64.b64encode
    return f"{SCRAM}${i}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def parse_scram_verifier(text: str) -> ScramSecret:
    """Salt, StoredKey, ServerKey and iteration count of a stored verifier; ValueError says what is wrong."""
    match = _VERIFIER.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            "a SCRAM verifier looks like "
            "'SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>'"
        )
    try:
        salt, stored_key, server_key = (base64.b64decode(g, validate=True) for g in match.groups()[1:])
    except binascii.Error as exc:
        raise ValueError(f"the SCRAM verifier holds invalid base64: {exc}") from None
    iterations = int(match[1])
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(
            f"the SCRAM verifier's iteration count {iterations} is outside {MIN_ITERATIONS}..{MAX_ITERATIONS}"
        )
    if len(salt) < 12 or len(stored_key) != 32 or len(server_key) != 32:
        raise ValueError("the SCRAM verifier's salt (at least 12 bytes) or keys (32 bytes each) have the wrong length")
    return salt, stored_key, server_key, iterations


@lru_cache(maxsize=1024)
def _secret_from_password(user: str, password: str) -> ScramSecret:
    """A SCRAM secret for a plain password, made once per (user, password) in this process.

    Keyed by user too, so two users with the same password are not given the same salt.
    """
    return parse_scram_verifier(scram_verifier(password))


def md5_password(user: str, password: str, salt: bytes) -> str:
    """The answer to AuthenticationMD5Password: 'md5' + md5(md5(password + user) hex + salt) hex."""
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    return "md5" + hashlib.md5(inner + salt).hexdigest()


def _malformed(what: str) -> AuthFailed:
    return AuthFailed("08P01", f"malformed {what}")


def _body(msg: bytes, kind: bytes, what: str) -> bytes:
    """The payload of a whole message of `kind`, after checking its header."""
    if len(msg) < 5 or msg[:1] != kind or struct.unpack_from("!I", msg, 1)[0] != len(msg) - 1:
        raise _malformed(what)
    return msg[5:]


# --- pgwarden as the server: authenticating a client ---------------------------------------------


class ClientAuth:
    """Server side of one client's authentication exchange: trust, md5, scram-sha-256."""

    def __init__(self, method: str, user: str, credential: Credential | None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown auth method {method!r}; expected one of {METHODS}")
        self.method = method
        self.user = user
        self.credential = credential
        self.done = False
        self._salt = b""  # md5
        self._secret: ScramSecret | None = None  # SCRAM: what the client must prove it knows
        self._scram: ScramServer | None = None  # SCRAM: the exchange, once the client has begun

    def start(self) -> bytes:
        """The first bytes to send the client (AuthenticationOk for trust, then `.done` is True)."""
        if self.method == "trust":
            self.done = True
            return AUTH_OK
        if self.credential is None:
            raise AuthFailed(
                "28000",
                f'role "{self.user}" is not known to pgwarden',
                hint="add it under `auth.users` in the pgwarden config",
            )
        if self.method == "md5":
            if self.credential.password is None:
                raise self._no_plain_password()
            self._salt = secrets.token_bytes(4)
            return auth_request(5, self._salt)
        self._secret = self._scram_secret(self.credential)
        return auth_sasl([SCRAM])

    def receive(self, msg: bytes) -> bytes:
        """Take a whole password message ('p') from the client; return what to send next."""
        if self.done or self.method == "trust":
            raise AuthFailed("08P01", "unexpected password message: authentication is over")
        body = _body(msg, b"p", "password message")
        if self.method == "md5":
            return self._md5(body)
        if self._scram is None:
            return self._sasl_initial(body)
        return self._sasl_response(self._scram, body)

    # md5

    def _md5(self, body: bytes) -> bytes:
        try:
            answer, end = read_cstr(body, 0)
        except ProtocolError:
            raise _malformed("md5 password message") from None
        if end != len(body):
            raise _malformed("md5 password message")
        assert self.credential is not None and self.credential.password is not None
        expected = md5_password(self.user, self.credential.password, self._salt)
        if not compare_digest(answer.encode("utf-8", "surrogateescape"), expected.encode()):
            raise self._wrong_password()
        self.done = True
        return AUTH_OK

    # SCRAM-SHA-256

    def _sasl_initial(self, body: bytes) -> bytes:
        """SASLInitialResponse: mechanism name, int32 length, client-first-message."""
        try:
            mechanism, pos = read_cstr(body, 0)
            (size,) = _I32.unpack_from(body, pos)
            first = body[pos + 4 :].decode("utf-8")
        except (ProtocolError, struct.error, UnicodeDecodeError):
            raise _malformed("SASLInitialResponse") from None
        if mechanism != SCRAM:
            raise AuthFailed(
                "08P01",
                f"client selected an invalid SASL authentication mechanism {mechanism!r}; pgwarden offers {SCRAM}",
            )
        if size != len(body) - pos - 4:
            raise _malformed("SASLInitialResponse")
        secret = self._secret
        server = ScramMechanism(SCRAM).make_server(lambda _name: secret)
        # PostgreSQL ignores the SCRAM user name (the startup packet's user counts). libpq sends an
        # empty one ("n=,r=..."), which scramp refuses, and any name may fail scramp's SASLprep:
        # give scramp a placeholder name, then put back the client's own message, since both
        # sides sign the exact text the client sent.
        gs2, bare = _split_client_first(first)
        placeholder = "n=*" + bare[bare.index(",") :] if bare.startswith("n=") and "," in bare else bare
        try:
            server.set_client_first(gs2 + placeholder)
            server.client_first_bare = bare
            server_first = server.get_server_first()
        except ScramException as exc:
            raise _malformed(f"SCRAM client-first-message ({exc})") from None
        self._scram = server
        return auth_request(11, server_first.encode())

    def _sasl_response(self, server: ScramServer, body: bytes) -> bytes:
        """SASLResponse: client-final-message with the proof; answer SASLFinal and AuthenticationOk."""
        try:
            server.set_client_final(body.decode("utf-8"))
            server_final = server.get_server_final()
        except UnicodeDecodeError:
            raise _malformed("SCRAM client-final-message") from None
        except ScramException as exc:
            if exc.server_error is ServerError.INVALID_PROOF:
                raise self._wrong_password() from None
            raise _malformed(f"SCRAM client-final-message ({exc})") from None
        self.done = True
        return auth_request(12, server_final.encode()) + AUTH_OK

    def _scram_secret(self, credential: Credential) -> ScramSecret:
        if credential.scram_verifier is not None:
            try:
                return parse_scram_verifier(credential.scram_verifier)
            except ValueError as exc:
                raise AuthFailed(
                    "28000",
                    f'the stored SCRAM verifier of user "{self.user}" is not usable: {exc}',
                    hint="make a new one with `pgwarden passwd`",
                ) from None
        if credential.password is None:
            raise self._no_plain_password()
        try:
            return _secret_from_password(self.user, credential.password)
        except ScramException as exc:  # a password SASLprep refuses
            raise AuthFailed("28000", f'the password of user "{self.user}" cannot be used with SCRAM: {exc}') from None

    def _no_plain_password(self) -> AuthFailed:
        if self.credential is not None and self.credential.scram_verifier is not None:
            return AuthFailed(
                "28000",
                f'user "{self.user}" has only a SCRAM verifier, which md5 authentication cannot use',
                hint="set `auth.method: scram-sha-256`, or give this user a plain "
                "`password` or `password_env` in the pgwarden config",
            )
        return AuthFailed(
            "28000",
            f'no password is set for user "{self.user}" in pgwarden',
            hint="if the config gives `password_env`, set that environment variable for the pgwarden process",
        )

    def _wrong_password(self) -> AuthFailed:
        return AuthFailed("28P01", f'password authentication failed for user "{self.user}"')


def _split_client_first(first: str) -> tuple[str, str]:
    """The GS2 header (up to its second comma, included) and the client-first-message-bare."""
    second = first.find(",", first.find(",") + 1)
    if first.find(",") < 0 or second < 0:
        raise _malformed("SCRAM client-first-message")
    return first[: second + 1], first[second + 1 :]


# --- pgwarden as a client: authenticating to a backend --------------------------------------------


class BackendAuth:
    """Client side of authenticating pgwarden to a backend: trust, cleartext, md5, SCRAM-SHA-256."""

    def __init__(self, user: str, password: str | None) -> None:
        self.user = user
        self.password = password
        self.done = False
        self._scram: ScramClient | None = None

    def receive(self, msg: bytes) -> bytes:
        """Take a whole AuthenticationXXX ('R') message; return the bytes to send (b"" for none)."""
        body = _body(msg, b"R", "authentication request from the backend")
        if len(body) < 4:
            raise _malformed("authentication request from the backend")
        (code,) = _I32.unpack_from(body, 0)
        data = body[4:]
        if code == 0:
            self.done = True
            return b""
        if code == 3:
            return password_message(cstr(self._need_password("password")))
        if code == 5:
            if len(data) != 4:
                raise _malformed("AuthenticationMD5Password from the backend")
            return password_message(cstr(md5_password(self.user, self._need_password("md5"), data)))
        if code == 10:
            return self._sasl_start(data)
        if code in (11, 12):
            return self._sasl_step(code, data)
        method = _UNSUPPORTED.get(code, f"request code {code}")
        raise AuthFailed(
            "28000",
            f"the backend asks pgwarden to authenticate with {method}, which pgwarden does not support",
            hint="let the backend's pg_hba.conf use scram-sha-256, md5, password or trust for pgwarden's connections",
        )

    def _need_password(self, method: str) -> str:
        if self.password is None:
            raise AuthFailed(
                "28P01",
                f'the backend asks for a password ({method}) for user "{self.user}" and pgwarden has none',
                hint="set backend_auth.password_env (or backend_auth.password) in the pgwarden config",
            )
        return self.password

    def _sasl_start(self, data: bytes) -> bytes:
        """AuthenticationSASL: pick SCRAM-SHA-256 and send the client-first-message."""
        mechanisms = data.split(b"\x00")
        if SCRAM.encode() not in mechanisms:
            offered = ", ".join(m.decode(errors="replace") for m in mechanisms if m)
            raise AuthFailed("28000", f"the backend offers only SASL mechanisms pgwarden does not support ({offered})")
        password = self._need_password(SCRAM)
        try:
            # The user name here is ignored by PostgreSQL (the startup packet's counts).
            self._scram = ScramClient([SCRAM], "*", password)
        except ScramException as exc:
            raise AuthFailed("28P01", f"the backend password cannot be used with SCRAM: {exc}") from None
        first = self._scram.get_client_first().encode()
        return password_message(cstr(SCRAM) + _I32.pack(len(first)) + first)

    def _sasl_step(self, code: int, data: bytes) -> bytes:
        """SASLContinue (11): send the proof; SASLFinal (12): check the backend's signature."""
        client = self._scram
        if client is None:
            raise AuthFailed("08P01", "the backend continued a SASL exchange that was not started")
        try:
            text = data.decode("utf-8")
            if code == 11:
                client.set_server_first(text)
                return password_message(client.get_client_final().encode())
            client.set_server_final(text)
        except UnicodeDecodeError:
            raise _malformed("SCRAM message from the backend") from None
        except ScramException as exc:
            if code == 12:
                raise AuthFailed(
                    "28P01",
                    f"the backend's SCRAM signature does not verify: it does not know the password either ({exc})",
                ) from None
            raise AuthFailed("28000", f"the backend's SCRAM message is not acceptable: {exc}") from None
        self._scram = None
        return b""
