"""Users, passwords, sessions, CSRF tokens and the slowing of repeated failed sign-ins.

Passwords are hashed with Argon2id (argon2-cffi's defaults: memory-hard, salted); neither a
password nor a session token is ever stored or logged in clear: the session cookie's token
is kept as its SHA-256. Each session has its own CSRF token, which every state-changing
request must echo in the ``X-CSRF-Token`` header (or a ``csrf_token`` form field).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from stream_app.vocabulary import WORK_QUEUES

_HASHER = PasswordHasher()
# Verified against when the user does not exist, so that an unknown name costs as much
# time as a wrong password (no user enumeration by timing).
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))

FAILURES_BEFORE_LOCK = 5
FIRST_LOCK_SECONDS = 5
MAX_LOCK_SECONDS = 900
USERNAME_MAX = 64


class UserError(ValueError):
    pass


@dataclass(frozen=True)
class User:
    username: str
    queues: tuple[str, ...]


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires_at: datetime
    token: str | None = None  # only right after creation, to set the cookie


def hash_password(password: str) -> str:
    if len(password) < 12:
        raise UserError("a password needs at least 12 characters")
    return _HASHER.hash(password)


def validate_username(name: str) -> str:
    if not name or len(name) > USERNAME_MAX or not all(c.isalnum() or c in "._-@" for c in name):
        raise UserError(f"a user name is 1-{USERNAME_MAX} letters, digits or . _ - @")
    return name


def validate_queues(queues: list[str]) -> list[str]:
    unknown = [q for q in queues if q not in WORK_QUEUES]
    if unknown or not queues:
        raise UserError(f"queues must be among {', '.join(WORK_QUEUES)}; got {', '.join(queues) or 'none'}")
    return sorted(set(queues))


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode())


# ----------------------------------------------------------------------- admin (sync)


def add_user(conn: psycopg.Connection, username: str, password: str | None, queues: list[str]) -> None:
    validate_username(username)
    queues = validate_queues(queues)
    digest = hash_password(password) if password is not None else None
    conn.execute(
        """INSERT INTO queue_user (username, password_hash, queues) VALUES (%s, %s, %s)
           ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash,
             queues = EXCLUDED.queues, disabled = false""",
        (username, digest, queues),
    )
    # A changed password or queue list ends the user's sessions.
    conn.execute("DELETE FROM user_session WHERE username = %s", (username,))


# ----------------------------------------------------------------------- service (async)


async def load_user(conn: psycopg.AsyncConnection, username: str) -> User | None:
    cur = await conn.execute(
        "SELECT username, queues FROM queue_user WHERE username = %s AND NOT disabled", (username,)
    )
    row = await cur.fetchone()
    return User(row[0], tuple(row[1])) if row else None


async def locked_for(conn: psycopg.AsyncConnection, username: str) -> float:
    """Seconds this name must wait before another sign-in attempt (0 = may try now)."""
    cur = await conn.execute(
        "SELECT extract(epoch FROM locked_until - now()) FROM login_failure "
        "WHERE username = %s AND locked_until > now()",
        (username,),
    )
    row = await cur.fetchone()
    return float(row[0]) if row else 0.0


async def verify_login(conn: psycopg.AsyncConnection, username: str, password: str) -> User | None:
    cur = await conn.execute(
        "SELECT password_hash, queues FROM queue_user WHERE username = %s AND NOT disabled", (username,)
    )
    row = await cur.fetchone()
    ok = False
    try:
        ok = _HASHER.verify(row[0] if row and row[0] else _DUMMY_HASH, password) and bool(row and row[0])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if ok:
        await conn.execute("DELETE FROM login_failure WHERE username = %s", (username,))
        return User(username, tuple(row[1]))
    # Counted per name tried, known or not; from the 5th failure on, each one locks the name
    # for twice as long as the one before (5 s, 10 s, 20 s … 15 min).
    await conn.execute(
        """INSERT INTO login_failure AS f (username, failures, last_failure_at) VALUES (%s, 1, now())
           ON CONFLICT (username) DO UPDATE SET failures = f.failures + 1, last_failure_at = now(),
             locked_until = CASE WHEN f.failures + 1 >= %s
               THEN now() + make_interval(secs => least(%s * power(2, f.failures + 1 - %s), %s)) END""",
        (
            username[:USERNAME_MAX],
            FAILURES_BEFORE_LOCK,
            FIRST_LOCK_SECONDS,
            FAILURES_BEFORE_LOCK,
            MAX_LOCK_SECONDS,
        ),
    )
    return None


async def create_session(conn: psycopg.AsyncConnection, user: User, idle: timedelta) -> Session:
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    cur = await conn.execute(
        "INSERT INTO user_session (token_sha256, username, csrf_token, expires_at) "
        "VALUES (%s, %s, %s, now() + %s) RETURNING expires_at",
        (token_sha256(token), user.username, csrf, idle),
    )
    (expires_at,) = await cur.fetchone()
    # Expired sessions of anyone are cleared as new ones are made.
    await conn.execute("DELETE FROM user_session WHERE expires_at < now()")
    return Session(user, csrf, expires_at, token)


async def resume_session(
    conn: psycopg.AsyncConnection, token: str, idle: timedelta, max_age: timedelta
) -> Session | None:
    """The live session of this cookie token (its idle expiry pushed on), or None."""
    cur = await conn.execute(
        """UPDATE user_session s SET expires_at = least(now() + %s, s.created_at + %s)
           FROM queue_user u
           WHERE s.token_sha256 = %s AND u.username = s.username AND NOT u.disabled
             AND s.expires_at > now() AND s.created_at + %s > now()
           RETURNING u.username, u.queues, s.csrf_token, s.expires_at""",
        (idle, max_age, token_sha256(token), max_age),
    )
    row = await cur.fetchone()
    if not row:
        return None
    return Session(User(row[0], tuple(row[1])), row[2], row[3])


async def end_session(conn: psycopg.AsyncConnection, token: str) -> None:
    await conn.execute("DELETE FROM user_session WHERE token_sha256 = %s", (token_sha256(token),))
