"""Signed acknowledgement links: the notification carries a token that acknowledges one
occurrence of one incident, with no login, until it expires. HMAC-SHA256 with a key that
all alerters and gateways share through KV."""

import base64
import hashlib
import hmac

import msgspec


class AckToken(msgspec.Struct, array_like=True):
    tenant: str
    incident: str
    occurrence: int
    expires_at: float


class InvalidToken(Exception):
    pass


_decoder = msgspec.json.Decoder(AckToken)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, token: AckToken) -> str:
    payload = msgspec.json.encode(token)
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify(key: bytes, text: str, now: float) -> AckToken:
    try:
        payload_part, mac_part = text.split(".")
        payload, mac = _unb64(payload_part), _unb64(mac_part)
    except ValueError:
        raise InvalidToken("malformed token") from None
    if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()):
        raise InvalidToken("bad signature")
    try:
        token = _decoder.decode(payload)
    except msgspec.DecodeError:
        raise InvalidToken("malformed token") from None
    if token.expires_at < now:
        raise InvalidToken("the link has expired")
    return token
